"""Entry point of ``lorapipe-onnx``: registers the ``onnx`` exporter."""

from __future__ import annotations

from lorapipe.plugin import hookimpl
from lorapipe_onnx.exporter import OnnxExporter


@hookimpl
def lorapipe_register_exporters(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(OnnxExporter)
