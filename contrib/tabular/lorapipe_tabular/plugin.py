"""Entry point of ``lorapipe-tabular``: registers the ``json``, ``csv`` and ``parquet`` loaders."""

from __future__ import annotations

from lorapipe.plugin import hookimpl
from lorapipe_tabular.csv_loader import CsvLoader
from lorapipe_tabular.json_loader import JsonLoader
from lorapipe_tabular.parquet_loader import ParquetLoader


@hookimpl
def lorapipe_register_loaders(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(JsonLoader)
    register(CsvLoader)
    register(ParquetLoader)
