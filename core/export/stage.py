"""The ``export`` stage: every configured exporter writes from ``merged/``.

Every exporter first checks the merged model (architecture, tokenizer) so an
unsupported model is refused before any file is written. What is recorded of each
exporter is the ``Exporter`` contract (``lorapipe.components``).
"""

from __future__ import annotations

from typing import Any

from lorapipe.context import RunContext
from lorapipe.errors import UserError
from lorapipe.manifest import require_intact, write_manifest
from lorapipe.safetensors_check import require_safe_model


def run_stage(ctx: RunContext) -> dict[str, Any]:
    exporters = ctx.plan.exporters
    if not exporters:
        return {"exporters": [], "note": "export.exporters is empty; nothing exported"}
    merged = ctx.paths.merged
    if not (merged / "config.json").is_file():
        raise UserError(
            f"{merged}: no merged model to export; run `lorapipe merge` first "
            "(and keep merge.enabled: true when export.exporters is set)"
        )
    require_intact(merged, "run `lorapipe merge CONFIG` again")
    require_safe_model(merged, "run `lorapipe merge CONFIG` again")
    for exporter in exporters:
        exporter.check(merged)
    artifacts: list[dict[str, Any]] = []
    summary_scores: dict[str, Any] = {}
    for exporter in exporters:
        out_dir = ctx.paths.export_dir(exporter.name)
        for path in exporter.export(merged, out_dir, ctx.run_info):
            artifacts.append({"exporter": exporter.name, "path": str(path),
                              "bytes": path.stat().st_size})
        write_manifest(out_dir)
        scores = exporter.scores(out_dir)
        if scores is not None:
            summary_scores[exporter.name] = scores
    return {"artifacts": artifacts, **({"scores": summary_scores} if summary_scores else {})}
