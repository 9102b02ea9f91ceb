"""A config file in, a validated ``PipelineConfig`` out: the safe YAML loader (no Python
tags, no duplicate keys, no alias bombs), ``--set`` overrides, and validation whose
failure is a ``ConfigError`` naming the dotted YAML field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lorapipe.config.messages import config_error
from lorapipe.config.schema import PipelineConfig
from lorapipe.errors import ConfigError

# A config is a few hundred values. Aliases (*name) repeat a node without copying it, so a
# few lines in which each anchor repeats the previous one several times (a "billion
# laughs") stand for billions of values, which validating or printing would walk one by
# one. A document that stands for more than this many is refused before anything walks it.
MAX_EXPANDED_VALUES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """Well-formed YAML the config loader will not accept, and the line to blame."""

    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.line = node.start_mark.line + 1
        self.message = message


class _ConfigLoader(yaml.SafeLoader):
    """The safe loader (no Python tags), refusing duplicate keys and alias bombs.

    Both are checked on the composed nodes, before construction: duplicates as written
    (a ``<<`` merge may be overridden, a key written twice is a mistake whose first block
    would silently vanish), and the expanded size while it is still a small graph.
    """

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in first:
                fix = ("merge the two blocks" if isinstance(value, yaml.MappingNode)
                       else "keep one of them")
                raise _Refused(key, f"key '{key.value}' is defined twice (first at line "
                                    f"{first[key.tag, key.value]}); {fix}")
            first[key.tag, key.value] = line
        return node

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {})
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for with every alias written out; refuses more than
    ``MAX_EXPANDED_VALUES``, and a node that contains itself. Linear in the nodes written:
    ``sizes`` remembers each node's size (-1 while it is being counted)."""
    known = sizes.get(id(node))
    if known == -1:
        raise _Refused(node, "an alias (*name) refers to a node that contains it; a config "
                             "cannot be infinite: write the value out")
    if known is not None:
        return known
    sizes[id(node)] = -1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_EXPANDED_VALUES:
            raise _Refused(node, f"aliases (*name) expand this node to more than "
                                 f"{MAX_EXPANDED_VALUES:,} values, like a 'billion laughs' "
                                 "bomb; write the values out instead of nesting aliases")
    sizes[id(node)] = total
    return total


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a config file with the safe config loader; every error names the line."""
    if not path.is_file():
        raise ConfigError("", f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_ConfigLoader)
    except _Refused as err:
        raise ConfigError("", f"{path}:{err.line}: {err.message}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError("", f"{path}: nested too deeply to be a config") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError("", f"{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{path}: not UTF-8 text") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: the top level must be a mapping of sections")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set a.b.c=value`` overrides; values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", f"'{item}' is not of the form key.path=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node: Any = data
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(key, f"--set: '{part}' is not an index of this list")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if isinstance(node.get(part), str):
                        node[part] = {"name": node[part]}  # component shorthand → mapping
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(key, f"--set: '{'.'.join(parts[:i])}' is not a section")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, override and validate a pipeline config (plugin options: see ``plan.py``)."""
    return validate_config(apply_overrides(read_yaml(Path(path)), overrides or []))


def validate_config(data: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise config_error(err, PipelineConfig) from None
