"""The pipeline config's schema: one pydantic model per YAML section, and the cross-field
checks in one place (``PipelineConfig._consistent``).

Pydantic checks the structure and every value's type and range; a component reference
(``{name: jsonl, path: ...}``) keeps its plugin's options unchecked here, because only
the plugin knows them: ``plan.py`` resolves each reference and validates its options.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from lorapipe.errors import ConfigError

Dtype = Literal["auto", "bf16", "fp16", "fp32"]
_PATH_MAX, _NAME_MAX = 4095, 255  # Linux's limits, in bytes


class Section(BaseModel):
    """A config section: unknown keys are errors, and so are infinite and NaN numbers
    (``epochs: .inf`` would pass every bound and crash the run)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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
    # fused 3-D expert weights by name (peft's target_parameters), e.g. experts.down_proj
    target_parameters: list[str] | None = None
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
        explicit = self.target_modules is not None or self.target_parameters is not None
        if self.target_detector is not None and explicit:
            raise ValueError("set either adapter.target_detector or adapter.target_modules "
                             "(and target_parameters), not both")
        if explicit and not (self.target_modules or self.target_parameters):
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
                    "prompt_response", "prompt_completion", "preference", "unpaired",
                    "text"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict)
    template: ComponentRef = Field(default_factory=lambda: ComponentRef(name="tokenizer"))
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    train_on_inputs: bool = False
    # Reasoning a template drops from earlier turns: train those turns as their own
    # samples, with it (expand), or as rendered, without it (last).
    reasoning_turns: Literal["last", "expand"] = "expand"
    train_reasoning: bool = True  # false: the answer is trained, its reasoning is context
    max_length: int = Field(2048, ge=16, le=1_048_576)
    # Raw text: tokens of a long document's previous block repeated before the next one,
    # as context (not trained twice).
    block_overlap: int = Field(0, ge=0)
    # Over max_length: drop the record, drop the earliest exchanges, then also cut the first
    # user turn from its start (truncate_prompt: TRL's keep_end), or cut the last reply.
    length_strategy: Literal["drop", "truncate_history", "truncate_prompt",
                             "truncate_response"] = "drop"
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
    # what training minimises: an objective plugin (sft: next-token cross-entropy)
    objective: ComponentRef = Field(default_factory=lambda: ComponentRef(name="sft"))
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
    # Several samples per row, no attention across them; auto: for raw text (every
    # training sample a document), which pretraining packs.
    packing: bool | Literal["auto"] = "auto"
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
    dtype: Dtype | None = None  # None: the base checkpoint's stored dtype


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

    @field_validator("output_dir")
    @classmethod
    def _path_fits(cls, value: str) -> str:
        """The kernel refuses a path over PATH_MAX or a name over NAME_MAX bytes; say so
        here rather than in the middle of prepare."""
        longest = max((len(part.encode()) for part in value.split("/")), default=0)
        if len(value.encode()) > _PATH_MAX or longest > _NAME_MAX:
            raise ValueError(f"too long for a path ({len(value.encode()):,} bytes, a name of "
                             f"{longest:,}; the limits are {_PATH_MAX} and {_NAME_MAX})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        """Checks that relate settings to each other, in one place, so ``validate`` catches
        a combination that would only fail (or silently do nothing) hours into a run.

        Raises ``ConfigError`` itself (pydantic lets it through) to name the field.
        """
        train, data = self.train, self.data
        held_out = (data.validation.fraction or 0) + (data.test.fraction or 0
                                                      if data.test is not None else 0)
        if held_out >= 1:
            raise ConfigError(
                "data.test.fraction",
                f"data.validation.fraction + data.test.fraction is {held_out:g}, which leaves "
                "nothing to train on; keep their sum below 1 (e.g. 0.05 and 0.05)",
            )
        if data.block_overlap >= data.max_length // 2:
            raise ConfigError(
                "data.block_overlap",
                f"{data.block_overlap} tokens of overlap leave less than half of each "
                f"{data.max_length}-token block to train; keep it below {data.max_length // 2}",
            )
        if train.early_stopping is not None and train.eval_steps is None:
            # Without eval_steps the loop evaluates once, at the last step: nothing to stop.
            raise ConfigError(
                "train.early_stopping",
                "needs evaluations during training, but train.eval_steps is null (only the "
                "last step is evaluated); set train.eval_steps, or remove train.early_stopping",
            )
        return self
