"""The pipeline config: pydantic models per section, loading, overrides and resolution.

Pydantic checks the structure and every value's type and range; a component reference
(``{name: jsonl, path: ...}``) keeps its plugin's options unchecked here, because only
the plugin knows them: ``plan.py`` resolves each reference and validates its options.
Every failure becomes a ``ConfigError`` naming the dotted YAML field.
"""

from __future__ import annotations

import difflib
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lorapipe.errors import ConfigError

Dtype = Literal["auto", "bf16", "fp16", "fp32"]


class Section(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class ComponentRef(BaseModel):
    """A component picked by ``name``; every other key is one of that plugin's options.

    Written either as a mapping (``{name: nf4, double_quant: false}``) or just the name.
    """

    model_config = ConfigDict(extra="allow")

    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def raw_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})



class ModelConfig(Section):
    name_or_path: str = Field(
        description="Hugging Face hub id, local model directory, or tiny-llama"
    )
    dtype: Dtype = "auto"
    quantizer: ComponentRef = Field(default_factory=lambda: ComponentRef(name="nf4"))
    trust_remote_code: bool = False
    # auto: FlashAttention-2 where installed on a GPU in bf16/fp16, else PyTorch's SDPA
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = "auto"


class AdapterConfig(Section):
    # None asks every registered detector in priority order until one answers.
    target_detector: ComponentRef | None = None
    target_modules: list[str] | None = None
    r: int = Field(16, ge=1, le=4096)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    use_dora: bool = False
    init: Literal["default", "gaussian", "pissa", "olora"] = "default"
    modules_to_save: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_way_to_pick_targets(self) -> AdapterConfig:
        if self.target_detector is not None and self.target_modules is not None:
            raise ValueError(
                "set either adapter.target_detector or adapter.target_modules, not both"
            )
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("adapter.target_modules is empty; remove it to detect targets")
        return self


class ValidationConfig(Section):
    """Held-out data: a seeded split of the training data, or a separate source."""

    fraction: float | None = Field(0.05, gt=0, lt=1)
    count: int | None = Field(None, ge=1)
    stratify_by: str | None = None
    loader: ComponentRef | None = None

    @model_validator(mode="after")
    def _one_size(self) -> ValidationConfig:
        if self.count is not None and "fraction" in self.model_fields_set:
            raise ValueError("set either data.validation.fraction or .count, not both")
        if self.count is not None:
            self.fraction = None
        return self


class TestSplitConfig(Section):
    """A test set the run never trains on nor picks its best checkpoint with: evaluators
    score it instead of the validation set. A seeded share of the cleaned data, or a
    separate source."""

    fraction: float | None = Field(None, gt=0, lt=1)
    count: int | None = Field(None, ge=1)
    loader: ComponentRef | None = None

    @model_validator(mode="after")
    def _one_size(self) -> TestSplitConfig:
        if sum(v is not None for v in (self.fraction, self.count, self.loader)) != 1:
            raise ValueError(
                "set exactly one of data.test.fraction, data.test.count and data.test.loader")
        return self


class NearDedupeConfig(Section):
    """Drop conversations whose word n-gram sets have an estimated Jaccard similarity of
    at least ``threshold`` with one already kept (MinHash with ``num_perm`` permutations)."""

    threshold: float = Field(0.85, gt=0, lt=1)
    num_perm: int = Field(128, ge=16, le=1024)
    ngram: int = Field(3, ge=1, le=16)


class DataConfig(Section):
    loader: ComponentRef
    format: Literal["auto", "messages", "alpaca", "sharegpt", "instruction_response",
                    "prompt_response"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict)
    template: ComponentRef = Field(default_factory=lambda: ComponentRef(name="tokenizer"))
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    train_on_inputs: bool = False
    max_length: int = Field(2048, ge=16, le=1_048_576)
    length_strategy: Literal["drop", "truncate_history", "truncate_response"] = "drop"
    dedupe: bool = True
    test: TestSplitConfig | None = None
    near_dedupe: NearDedupeConfig | None = None  # opt-in: MinHash of every record
    min_response_chars: int = Field(1, ge=1)  # shorter assistant replies drop the record
    strict: bool = False
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    @field_validator("near_dedupe")
    @classmethod
    def _datasketch_installed(cls, value: NearDedupeConfig | None) -> NearDedupeConfig | None:
        import importlib.util

        if value is not None and importlib.util.find_spec("datasketch") is None:
            raise ValueError("needs datasketch: pip install 'lorapipe[dedupe]'")
        return value


class EarlyStoppingConfig(Section):
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)


class SpikeConfig(Section):
    """Finite instability: a step whose loss or gradient norm is far above its recent
    median (the last ``window`` normal steps) is a spike; ``policy`` says what it costs."""

    policy: Literal["skip", "rollback", "warn"] = "skip"
    loss_factor: float = Field(3.0, gt=1)
    grad_norm_factor: float = Field(10.0, gt=1)
    window: int = Field(20, ge=4)


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    micro_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(4, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    loraplus_lr_ratio: float | None = Field(None, ge=1)
    gradient_checkpointing: bool = True
    activation_offload: bool = False  # GPU: keep saved activations in CPU memory
    kernels: Literal["liger"] | None = None  # GPU: Liger's fused Triton kernels
    packing: bool = False
    padding_free: bool = False  # each micro batch as one row: no padding tokens at all
    group_by_length: bool = True
    logging_steps: int = Field(10, ge=1)
    # "auto": about every 10% of the steps (and always at the last), so the best
    # checkpoint and early stopping have evaluations to choose from; None: the last only.
    eval_steps: Annotated[int, Field(ge=1)] | Literal["auto"] | None = "auto"
    save_steps: int = Field(100, ge=1)
    save_total_limit: int = Field(3, ge=1)
    early_stopping: EarlyStoppingConfig | None = None
    max_nonfinite_steps: int = Field(3, ge=1)
    spikes: SpikeConfig = Field(default_factory=SpikeConfig)
    auto_batch: bool = False  # on out-of-memory: halve micro batch, double accumulation, retry
    seed: int = 42
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, names: list[str]) -> list[str]:
        import importlib.util

        if len(set(names)) != len(names):
            raise ValueError(f"each tracker once, please (got {names})")
        for name in names:
            if importlib.util.find_spec(name) is None:
                extra = "mlflow-skinny" if name == "mlflow" else name
                raise ValueError(f"{name} is not installed; pip install {extra}")
        return names

    @field_validator("learning_rate")
    @classmethod
    def _plausible_lr(cls, value: float) -> float:
        if value > 0.1:
            raise ValueError(
                f"{value} is far too high for fine-tuning; LoRA learning rates are "
                "usually 1e-5 to 1e-3 (default 2e-4)"
            )
        return value


class EvaluateConfig(Section):
    evaluators: list[ComponentRef] = Field(
        default_factory=lambda: [ComponentRef(name="perplexity")]
    )


class MergeConfig(Section):
    enabled: bool = True
    dtype: Dtype | None = None  # None: the model's dtype


class ExportConfig(Section):
    exporters: list[ComponentRef] = Field(default_factory=list)


class PipelineConfig(Section):
    model: ModelConfig
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    output_dir: Annotated[str, Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        """Checks that relate settings to each other, in one place, so ``validate`` catches
        a combination that would only fail (or silently do nothing) hours into a run.

        Raises ``ConfigError`` itself (pydantic lets it through) to name the field.
        """
        train = self.train
        if train.early_stopping is not None and train.eval_steps is None:
            # Without eval_steps the loop evaluates once, at the last step: nothing to stop.
            raise ConfigError(
                "train.early_stopping",
                "needs evaluations during training, but train.eval_steps is null (only the "
                "last step is evaluated); set train.eval_steps, or remove train.early_stopping",
            )
        return self


# --- loading --------------------------------------------------------------------------

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


# --- error messages -------------------------------------------------------------------


def config_error(
    err: ValidationError, model: type[BaseModel], prefix: str = "", owner: str | None = None
) -> ConfigError:
    """The most useful pydantic error as one line naming the field, with a did-you-mean.

    An unknown key comes first: a misspelled option usually also leaves the real one
    missing, and reporting that would hide the typo the user has to fix.
    """
    errors = err.errors(include_url=False)
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(part) for part in first["loc"] if not _is_union_tag(part)]
    field = ".".join([prefix, *loc] if prefix else loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        known = _known_fields(model, loc[:-1])
        what = f"unknown option for {owner}" if owner else "unknown key"
        message = f"{what}. {_did_you_mean(loc[-1], known)}"
    elif kind == "missing":
        message = "required but missing"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if "input" in first and kind not in ("model_type", "dict_type", "value_error"):
            message += f" (got {_short_repr(first['input'])})"
    if len(errors) > 1:
        message += f" [and {len(errors) - 1} more problem(s); fix this one first]"
    return ConfigError(field, message)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 80, 80
_REPR_CHARS = 80


def _short_repr(value: Any) -> str:
    """``repr(value)`` cut to about 80 characters, without building the whole of it: the
    message is one line, and a value may be a megabyte string or a huge nested list."""
    text = _REPR.repr(value)
    return text if len(text) <= _REPR_CHARS else text[: _REPR_CHARS - 3] + "..."


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the union member's name (e.g. 'ComponentRef', 'int') into the location
    return isinstance(part, str) and (part[:1].isupper() or part in {"int", "float", "str", "none"})


def _known_fields(model: type[BaseModel], path: list[str]) -> list[str]:
    current: Any = model
    for part in path:
        if part.isdigit():
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"Did you mean '{close[0]}'?"
    return f"Valid keys: {', '.join(known)}." if known else "Remove it."

