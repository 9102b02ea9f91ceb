"""The ``onnx`` exporter: ``export/onnx/`` holds the merged model as ONNX, ready to serve.

Beside ``model.onnx`` go the merged model's config, generation config and tokenizer
files, as in optimum's ONNX exports, and ``verification.json``: onnxruntime's logits
measured against transformers'. The whole directory appears at once or not at all.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from lorapipe.plugin import Exporter, Options, RunInfo, UserError, atomic_directory

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# What torch.onnx's exporter imports, and what runs the graph to check it.
_NEEDED = ("onnx", "onnxscript", "onnxruntime")
# merged/ files that the ONNX graph replaces, or that describe merged/ itself: its
# checksums, its merge checks, and its model card (which says how transformers loads it).
_NOT_SERVED = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json",
               "manifest.json", "lorapipe_merge.json", "README.md")


class OnnxOptions(Options):
    # What torch.onnx writes: it translates to 18 and converts up to 23 (its maximum);
    # asked for more, it wrote an opset-30 graph that onnxruntime refused to load.
    opset: int = Field(18, ge=18, le=23)
    check: bool = True  # run onnxruntime against transformers on the written graph
    tolerance: float = Field(1e-3, gt=0)  # the largest max |logit diff| check accepts


class OnnxExporter(Exporter):
    """ONNX (fp32, opset 18 by default) for onnxruntime; logits of every position, no KV cache."""

    name = "onnx"
    Options = OnnxOptions

    def check(self, model_dir: Path) -> None:
        missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
        if missing:
            raise self.config_error(
                f"the onnx exporter needs {', '.join(missing)}, which is not installed: "
                f"pip install {' '.join(missing)} (or reinstall lorapipe-onnx)"
            )
        config_file = model_dir / "config.json"
        if not config_file.is_file():
            raise self.config_error(f"{model_dir}: no config.json, so no model to export")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        architectures = config.get("architectures") or []
        if not any(name.endswith("ForCausalLM") for name in architectures):
            raise self.config_error(
                f"{model_dir} holds {', '.join(architectures) or 'no architecture'}; the "
                "onnx exporter exports causal language models (…ForCausalLM) only"
            )

    def export(self, merged_dir: Path, out_dir: Path, run: RunInfo | None) -> list[Path]:
        """``model.onnx`` (and ``model.onnx.data`` past 1.5 GB of weights), and with
        ``check`` ``verification.json``; the serving files are copied but not listed."""
        import torch
        from transformers import AutoModelForCausalLM

        from lorapipe.plugin import from_pretrained
        from lorapipe_onnx.convert import write_onnx

        trust = run is not None and run.trust_remote_code  # model.trust_remote_code
        model = from_pretrained(AutoModelForCausalLM, merged_dir, trust_remote_code=trust,
                                dtype=torch.float32).eval()
        with atomic_directory(out_dir) as tmp:
            written = write_onnx(model, tmp / "model.onnx", self.options.opset)
            _copy_serving_files(merged_dir, tmp)
            if self.options.check:
                written.append(self._verify(model, tmp))
        return [out_dir / path.name for path in written]

    def _verify(self, model: PreTrainedModel, tmp: Path) -> Path:
        """``verification.json``; a user error when the logits differ more than allowed."""
        import onnxruntime

        from lorapipe_onnx.verify import PROBES, max_logit_diff

        diff = max_logit_diff(model, tmp / "model.onnx")
        report = {"max_abs_logit_diff": diff, "tolerance": self.options.tolerance,
                  "probes": [{"batch": 2, "length": length, "left_padding": padding}
                             for length, padding in PROBES],
                  "onnxruntime": onnxruntime.__version__}
        path = tmp / "verification.json"
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if diff > self.options.tolerance:
            raise UserError(
                f"{self.field}: onnxruntime's logits differ from transformers' by up to "
                f"{diff:.3g} (tolerance {self.options.tolerance:g}); nothing was exported. "
                "Raise tolerance if that is close enough, or report the model's architecture"
            )
        print(f"onnx: max |logit diff| onnxruntime vs transformers {diff:.2g}")
        return path


def _copy_serving_files(merged_dir: Path, out_dir: Path) -> None:
    """config.json, generation_config.json, the tokenizer and chat template files."""
    for path in sorted(merged_dir.iterdir()):
        if (path.is_file() and not path.name.startswith(".")
                and not any(path.match(pattern) for pattern in _NOT_SERVED)):
            shutil.copy2(path, out_dir / path.name)
