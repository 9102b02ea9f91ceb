"""What the three metrics share: generate, score each sample, write the predictions.

Per-sample predictions go to ``eval/<metric>/predictions.jsonl`` (prompt, reference,
both replies and their scores) so a user can see *why* a score moved; the aggregate goes
into ``eval/report.json`` through the evaluate stage.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from lorapipe.plugin import EvalContext, Evaluator, atomic_write_text, paired_bootstrap
from lorapipe_textmetrics.generations import GenerationOptions, generations


class TextMetric(Evaluator):
    """An evaluator that scores greedy replies against the reference replies."""

    Options = GenerationOptions
    metric: ClassVar[str]

    @abstractmethod
    def sample_scores(self, predictions: list[str], references: list[str]) -> list[float]:
        """One score per prediction against its reference."""

    def aggregate(self, predictions: list[str], references: list[str],
                  scores: list[float]) -> float:
        """The corpus score; the mean of the sample scores unless the metric defines one."""
        return sum(scores) / len(scores) if scores else 0.0

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        gen = generations(context, self.options)
        refs = gen.references
        scores = {side: self.sample_scores(replies, refs)
                  for side, replies in (("base", gen.base), ("finetuned", gen.finetuned))}
        totals = {side: self.aggregate(replies, refs, scores[side])
                  for side, replies in (("base", gen.base), ("finetuned", gen.finetuned))}
        result: dict[str, Any] = {
            "base": {self.metric: totals["base"]},
            "finetuned": {self.metric: totals["finetuned"]},
            "change": {self.metric: totals["finetuned"] - totals["base"]},
            "samples": len(refs),
        }
        if refs:
            def on_draw(draw: Any) -> tuple[float, float]:
                sides = (("base", gen.base), ("finetuned", gen.finetuned))
                picked = [refs[i] for i in draw]
                base, tuned = (self.aggregate([replies[i] for i in draw], picked,
                                              [scores[side][i] for i in draw])
                               for side, replies in sides)
                return base, tuned

            intervals = paired_bootstrap(len(refs), on_draw)
            result["ci95"] = {key: {self.metric: value} for key, value in intervals.items()}
        if context.output_dir is not None:
            path = context.output_dir / self.name / "predictions.jsonl"
            self._write(path, gen, scores)
            result["predictions"] = str(path)
        return result

    @staticmethod
    def _write(path: Path, gen: Any, scores: dict[str, list[float]]) -> None:
        rows = [
            {"index": i, "prompt": conv[: max(j for j, m in enumerate(conv)
                                              if m["role"] == "assistant")],
             "reference": ref, "base": base, "finetuned": tuned,
             "base_score": b_score, "finetuned_score": t_score}
            for i, (conv, ref, base, tuned, b_score, t_score) in enumerate(zip(
                gen.conversations, gen.references, gen.base, gen.finetuned,
                scores["base"], scores["finetuned"], strict=True))
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                        for row in rows))
