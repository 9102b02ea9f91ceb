"""The built-in ``none`` quantizer: the base model in ``model.dtype`` (plain LoRA)."""

from __future__ import annotations

from typing import Any

from lorapipe.plugin import Quantizer, enable_checkpointing, freeze, hookimpl


class NoQuantizer(Quantizer):
    """No quantization: load the frozen base in model.dtype (bf16/fp16/fp32)."""

    name = "none"
    quantized = False

    def storage_dtype(self, dtype: Any, device: str) -> Any:
        return dtype

    def from_pretrained_kwargs(self, dtype: Any, device: str) -> dict[str, Any]:
        return {"dtype": dtype}

    def prepare_for_training(self, model: Any, *, gradient_checkpointing: bool) -> Any:
        freeze(model)
        if gradient_checkpointing:
            enable_checkpointing(model)
        return model

    def weight_bytes(self, quantizable: int, other: int, dtype: Any) -> int:
        return (quantizable + other) * dtype.itemsize


@hookimpl
def lorapipe_register_quantizers(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(NoQuantizer)
