"""The built-in ``hf`` loader: any dataset 🤗 datasets can open, by name or by path.

``dataset`` is what ``datasets.load_dataset`` takes (a hub id such as
``tatsu-lab/alpaca``, a local dataset directory, or a builder such as ``json``/``csv``/
``parquet`` with ``data_files``), or a directory written by ``save_to_disk``, which
``load_dataset`` cannot open and ``load_from_disk`` does. Rows arrive as dicts and are
mapped onto the canonical conversation by ``data.format`` like every other loader's.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from lorapipe.plugin import Loader, Options, RawRecord, hookimpl

# Files ``save_to_disk`` writes: one split, or a dict of splits.
_SAVED = ("state.json", "dataset_dict.json")


class HfOptions(Options):
    dataset: str = Field(min_length=1)
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    split: str = "train"
    subset: str | None = None
    streaming: bool = False

    @field_validator("dataset")
    @classmethod
    def _expand(cls, value: str) -> str:
        local = Path(value).expanduser()
        return str(local) if local.exists() else value


class HfLoader(Loader):
    """A 🤗 dataset split, streamed with ``streaming: true``; locations ``name[split]:row N``."""

    name = "hf"
    Options = HfOptions

    def _saved_dir(self) -> Path | None:
        path = Path(self.options.dataset)
        return path if any((path / name).is_file() for name in _SAVED) else None

    @functools.cached_property
    def _dataset(self) -> Any:
        """Opened once: ``fingerprint`` and ``records`` both read it."""
        import datasets

        options = self.options
        try:
            saved = self._saved_dir()
            if saved is not None:
                loaded = datasets.load_from_disk(str(saved))
                if isinstance(loaded, datasets.DatasetDict):
                    if options.split not in loaded:
                        raise self.config_error(
                            f"{saved} has no split {options.split!r}; it has "
                            f"{', '.join(loaded)}", "split")
                    loaded = loaded[options.split]
                return loaded.to_iterable_dataset() if options.streaming else loaded
            return datasets.load_dataset(
                options.dataset, options.subset, data_files=options.data_files,
                split=options.split, streaming=options.streaming)
        except (FileNotFoundError, ValueError, ConnectionError, OSError,
                datasets.exceptions.DatasetNotFoundError) as err:
            raise self.config_error(
                f"datasets cannot open {options.dataset!r} (split {options.split!r}"
                + (f", subset {options.subset!r}" if options.subset else "")
                + f"): {str(err).splitlines()[0] if str(err) else type(err).__name__}; give a "
                "hub id (with a network), a local dataset directory, a save_to_disk "
                "directory, or a builder (json, csv, parquet) with data_files",
                "dataset") from None

    def records(self) -> Iterator[RawRecord]:
        source = f"{self.options.dataset}[{self.options.split}]"
        for row, data in enumerate(self._dataset, start=1):
            yield RawRecord(source, f"{source}:row {row}", data=dict(data))

    def fingerprint(self) -> str | None:
        """The options and the dataset's own fingerprint (a hash of its files and of the
        processing that made it); ``None`` when streaming, which has none."""
        if self.options.streaming:
            return None
        digest = hashlib.sha256(self.options.model_dump_json().encode() + b"\0")
        digest.update(self._dataset._fingerprint.encode())
        return digest.hexdigest()


@hookimpl
def lorapipe_register_loaders(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(HfLoader)
