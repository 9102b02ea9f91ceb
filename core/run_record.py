"""run.json: which stages ran, how they ended, with which config and library versions.

Resuming trusts it (the stages marked done are skipped), so it is read only through its
schema: a file that is not what lorapipe writes is refused in one line, never half-used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import Required, TypedDict

from lorapipe.config.messages import file_problem
from lorapipe.errors import UserError

_Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


@with_config(ConfigDict(extra="forbid", strict=True))
class StageRecord(TypedDict, total=False):
    status: Required[Literal["running", "done", "failed", "interrupted"]]
    started_at: Required[_Seconds]
    seconds: _Seconds
    summary: dict[str, Any]  # the stage's own summary
    error: str


@with_config(ConfigDict(extra="forbid", strict=True))
class RunRecord(TypedDict, total=False):
    stages: Required[dict[Annotated[str, Field(max_length=64)], StageRecord]]
    config_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{0,64}$")]
    versions: dict[str, str | None]


_RUN_RECORD = TypeAdapter(RunRecord)


def read_run_record(path: Path) -> dict[str, Any]:
    """run.json checked against its schema (no stages yet where there is none)."""
    if not path.is_file():
        return {"stages": {}}
    try:
        return _RUN_RECORD.validate_json(path.read_bytes())
    except ValidationError as err:
        raise UserError(f"{path} is damaged ({file_problem(err)}), so lorapipe cannot tell "
                        "which stages are done; start the run again with `lorapipe run "
                        "CONFIG --overwrite`") from None
