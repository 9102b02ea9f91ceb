"""The built-in ``nf4`` quantizer: bitsandbytes 4-bit (QLoRA)."""

from __future__ import annotations

from typing import Any, Literal

from lorapipe.plugin import Options, Quantizer, hookimpl

# torch, bitsandbytes and peft are imported inside the methods: plugin discovery
# (`lorapipe components`, `validate`) imports this module and must stay fast.
_STORAGE = {"uint8": "uint8", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# bitsandbytes quantizes in blocks of 64 weights, each with an absmax scale: fp32, or with
# double quantization uint8 plus one fp32 per 256 blocks.
_BLOCK = 64


class Nf4Options(Options):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    # auto: bf16 where the hardware has it, else fp16 on GPU / fp32 on CPU
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # auto: uint8, or the compute dtype's words under FSDP (which shards only float tensors)
    quant_storage: Literal["auto", "uint8", "bf16", "fp16", "fp32"] = "auto"


class Nf4Quantizer(Quantizer):
    """bitsandbytes 4-bit NF4/FP4 with double quantization, prepared for k-bit training."""

    name = "nf4"
    Options = Nf4Options

    quantized = True

    def storage_dtype(self, dtype: Any, device: str) -> Any:
        import torch

        from lorapipe.plugin import fsdp_launched

        storage = self.options.quant_storage
        if storage == "auto":
            return self._compute_dtype(device) if fsdp_launched() else torch.uint8
        return getattr(torch, _STORAGE[storage])

    def _compute_dtype(self, device: str) -> Any:
        from lorapipe.plugin import resolve_dtype

        return resolve_dtype(self.options.compute_dtype, device=device)

    def check_available(self, device: str) -> None:
        """Quantize and run one small 4-bit layer with these exact options on ``device``.

        Asking bitsandbytes itself is the only reliable test: which options a backend
        supports changes between releases and devices.
        """
        import torch

        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise self.config_error(
                f"nf4 needs bitsandbytes, which cannot be imported ({err}); "
                "pip install bitsandbytes, or use quantizer: none",
            ) from None
        compute = self._compute_dtype(device)
        opts = self.options
        try:
            layer = bnb.nn.Linear4bit(
                _BLOCK, _BLOCK, bias=False, compute_dtype=compute, quant_type=opts.quant_type,
                compress_statistics=opts.double_quant,
                quant_storage=self.storage_dtype(compute, device),
            ).to(device)
            layer(torch.ones(1, _BLOCK, dtype=compute, device=device))
        except Exception as err:  # any failure here means "not on this machine"
            raise self.config_error(
                f"nf4 (quant_type={opts.quant_type}, compute_dtype={compute}, quant_storage="
                f"{opts.quant_storage}) cannot run on {device} with bitsandbytes "
                f"{bnb.__version__}: {str(err).strip().splitlines()[0] if str(err) else err!r}. "
                "Change these options, use quantizer: none, or run on a CUDA GPU",
            ) from None

    def from_pretrained_kwargs(self, dtype: Any, device: str) -> dict[str, Any]:
        from transformers import BitsAndBytesConfig

        opts = self.options
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=opts.quant_type,
            bnb_4bit_use_double_quant=opts.double_quant,
            bnb_4bit_compute_dtype=self._compute_dtype(device),
            bnb_4bit_quant_storage=self.storage_dtype(dtype, device),
        )
        return {"dtype": dtype, "quantization_config": config}

    def prepare_for_training(self, model: Any, *, gradient_checkpointing: bool) -> Any:
        """peft's k-bit preparation (freeze, upcast norms/embeddings to fp32, checkpoint),
        except that fused expert weights keep their dtype.

        peft's ``prepare_model_for_kbit_training`` upcasts every non-4-bit weight, which
        for a mixture-of-experts model means most of it (bitsandbytes leaves 3-D expert
        stacks unquantized): twice their bf16 memory. Here they stay in the compute dtype
        and their modules compute in it, as a 4-bit layer does, returning fp32.
        """
        import torch

        from lorapipe.plugin import enable_checkpointing, expert_parameters, freeze

        freeze(model)
        experts = expert_parameters(model)
        kept = {id(param) for param in experts.values()}
        for param in model.parameters():
            if (param.dtype in (torch.float16, torch.bfloat16) and id(param) not in kept
                    and type(param).__name__ != "Params4bit"):
                param.data = param.data.to(torch.float32)
        owners = {name.rsplit(".", 1)[0] for name, param in experts.items()
                  if param.dtype != torch.float32}
        for name in owners:
            compute_in_own_dtype(model.get_submodule(name))
        if gradient_checkpointing:  # non-reentrant: no input gradients needed
            enable_checkpointing(model)
        return model

    def weight_bytes(self, quantizable: int, other: int, dtype: Any) -> int:
        double = self.options.double_quant
        scale_bits = (8 / _BLOCK + 32 / (_BLOCK * 256)) if double else 32 / _BLOCK
        # prepare_model_for_kbit_training upcasts every non-4-bit fp16/bf16 weight to fp32
        return int(quantizable * (4 + scale_bits) / 8) + other * 4

    def activation_dtype(self, dtype: Any) -> Any:
        import torch

        return torch.float32  # the upcast fp32 embeddings make the residual stream fp32


def compute_in_own_dtype(module: Any) -> None:
    """``module`` takes floating inputs in its weights' dtype and gives fp32 back."""
    import torch

    dtype = next(module.parameters()).dtype

    def cast(value: Any, to: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(to)
        if isinstance(value, tuple):
            return tuple(cast(item, to) for item in value)
        return value

    module.register_forward_pre_hook(
        lambda _, args, kwargs: (cast(args, dtype), {k: cast(v, dtype) for k, v in kwargs.items()}),
        with_kwargs=True)
    module.register_forward_hook(lambda _, __, output: cast(output, torch.float32))


@hookimpl
def lorapipe_register_quantizers(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(Nf4Quantizer)
