"""The three metrics: exact match, ROUGE-L F1 (rouge-score) and BLEU (sacrebleu)."""

from __future__ import annotations

from lorapipe_textmetrics.evaluator import TextMetric


def _normal(text: str) -> str:
    return " ".join(text.split())


class ExactMatch(TextMetric):
    """Share of greedy replies equal to the reference (surrounding/repeated whitespace ignored)."""

    name = "exact_match"
    metric = "exact_match"

    def sample_scores(self, predictions: list[str], references: list[str]) -> list[float]:
        return [float(_normal(p) == _normal(r)) for p, r in zip(predictions, references,
                                                                  strict=True)]


class RougeL(TextMetric):
    """Mean ROUGE-L F1 of greedy replies against the references (rouge-score, no stemming)."""

    name = "rouge_l"
    metric = "rouge_l"

    def sample_scores(self, predictions: list[str], references: list[str]) -> list[float]:
        from rouge_score.rouge_scorer import RougeScorer

        scorer = RougeScorer(["rougeL"])
        return [scorer.score(r, p)["rougeL"].fmeasure
                for p, r in zip(predictions, references, strict=True)]


class Bleu(TextMetric):
    """Corpus BLEU (sacrebleu, 0-100) of greedy replies; per-sample sentence BLEU alongside."""

    name = "bleu"
    metric = "bleu"

    def sample_scores(self, predictions: list[str], references: list[str]) -> list[float]:
        import sacrebleu

        return [sacrebleu.sentence_bleu(p, [r]).score
                for p, r in zip(predictions, references, strict=True)]

    def aggregate(self, predictions: list[str], references: list[str],
                  scores: list[float]) -> float:
        import sacrebleu

        return sacrebleu.corpus_bleu(predictions, [references]).score if predictions else 0.0
