"""The ``dialogue`` loader: conversations in plain text, one block per conversation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lorapipe.plugin import FileLoader, RawRecord, RecordError, hookimpl

ROLES = {"system": "system", "user": "user", "assistant": "assistant"}


class DialogueLoader(FileLoader):
    """Plain-text dialogues: 'User:' / 'Assistant:' / 'System:' lines, blank line between."""

    name = "dialogue"  # its options are FileOptions: ``path``, a file, glob or list

    def read_file(self, path: Path) -> Iterator[RawRecord]:
        block: list[tuple[int, str]] = []
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    yield RawRecord(str(path), f"{path}:{number}",
                                    error=RecordError("invalid_text", "not UTF-8"))
                    block = []
                    continue
                if line.strip():
                    block.append((number, line))
                elif block:
                    yield self._record(path, block)
                    block = []
        if block:
            yield self._record(path, block)

    @staticmethod
    def _record(path: Path, block: list[tuple[int, str]]) -> RawRecord:
        location = f"{path}:{block[0][0]}"
        messages: list[dict[str, str]] = []
        for number, line in block:
            role, sep, content = line.partition(":")
            if sep and role.strip().lower() in ROLES:
                messages.append({"role": ROLES[role.strip().lower()], "content": content.strip()})
            elif messages:
                messages[-1]["content"] += "\n" + line.strip()
            else:
                return RawRecord(
                    str(path),
                    f"{path}:{number}",
                    error=RecordError("unknown_role", "line starts with no 'User:'/'Assistant:'/"
                                      f"'System:' prefix: {line[:40]!r}"),
                )
        return RawRecord(str(path), location, data={"messages": messages})


@hookimpl
def lorapipe_register_loaders(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(DialogueLoader)
