"""The pipeline config: ``schema`` (the sections), ``loading`` (YAML file and ``--set`` in,
validated config out), ``messages`` (validation errors as one line naming the field)."""

from lorapipe.config.loading import (
    MAX_EXPANDED_VALUES,
    apply_overrides,
    load_config,
    read_yaml,
    validate_config,
)
from lorapipe.config.messages import config_error
from lorapipe.config.schema import (
    AdapterConfig,
    ComponentRef,
    DataConfig,
    Dtype,
    EarlyStoppingConfig,
    EvaluateConfig,
    ExportConfig,
    MergeConfig,
    ModelConfig,
    NearDedupeConfig,
    PipelineConfig,
    Section,
    SpikeConfig,
    TestSplitConfig,
    TrainConfig,
    ValidationConfig,
)

__all__ = [
    "MAX_EXPANDED_VALUES",
    "AdapterConfig",
    "ComponentRef",
    "DataConfig",
    "Dtype",
    "EarlyStoppingConfig",
    "EvaluateConfig",
    "ExportConfig",
    "MergeConfig",
    "ModelConfig",
    "NearDedupeConfig",
    "PipelineConfig",
    "Section",
    "SpikeConfig",
    "TestSplitConfig",
    "TrainConfig",
    "ValidationConfig",
    "apply_overrides",
    "config_error",
    "load_config",
    "read_yaml",
    "validate_config",
]
