"""The hooks a lorapipe plugin may implement.

A plugin is a module (named by an entry point in the ``lorapipe.plugins`` group) that
defines functions marked with ``@lorapipe.hookimpl`` and named after the specs below.
Each ``lorapipe_register_<kind>`` hook receives a ``register`` callable; call it once per
component class the plugin provides::

    from lorapipe import hookimpl
    from lorapipe.components import Loader

    class CsvLoader(Loader):
        name = "csv"
        ...

    @hookimpl
    def lorapipe_register_loaders(register):
        register(CsvLoader)

The class's ``name`` is what users write in YAML; its ``Options`` pydantic model
validates the options they write next to it. A name already taken by another plugin is
an error naming both, so choose names that say what the component is.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "lorapipe"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[type], None]


@hookspec
def lorapipe_register_loaders(register: Register) -> None:
    """Register data loaders: subclasses of ``lorapipe.components.Loader``.

    A loader reads a source (files, a database, ...) and yields ``RawRecord``s, one per
    record, each with its location (file and line or row) so bad records can be reported.
    """


@hookspec
def lorapipe_register_chat_templates(register: Register) -> None:
    """Register chat templates: subclasses of ``lorapipe.components.ChatTemplate``.

    A template turns a conversation into token ids plus, per token, whether it is trained.
    """


@hookspec
def lorapipe_register_target_detectors(register: Register) -> None:
    """Register target detectors: subclasses of ``lorapipe.components.TargetDetector``.

    A detector names the modules of a model that get LoRA adapters, or answers ``None``
    when it does not recognise the model, so the next detector is asked.
    """


@hookspec
def lorapipe_register_quantizers(register: Register) -> None:
    """Register quantizers: subclasses of ``lorapipe.components.Quantizer``.

    A quantizer decides how the frozen base model is loaded and prepares it for training.
    """


@hookspec
def lorapipe_register_evaluators(register: Register) -> None:
    """Register evaluators: subclasses of ``lorapipe.components.Evaluator``.

    An evaluator scores the base and the fine-tuned model on held-out data.
    """


@hookspec
def lorapipe_register_exporters(register: Register) -> None:
    """Register exporters: subclasses of ``lorapipe.components.Exporter``.

    An exporter writes a deployable artifact (a GGUF file, ...) from the merged model.
    """
