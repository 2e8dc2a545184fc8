"""Request and response bodies, kept apart from the tables (``models.py``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deepgrad_core.presets import PRESETS
from deepgrad_core.spec import ExperimentSpec, spec_changes
from deepgrad_server.models import Job, JobState

JOB_ID_PATTERN = r"^[0-9a-f]{12}$"


# Characters a display name may not hold: C0/C1 controls and DEL (they rewrite terminals: U+009B is a CSI),
# bidirectional controls (U+202E turns "gpj.exe" into "exe.jpg"), and lone surrogates (not encodable text).
_NAME_FORBIDDEN = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
NAME_PATTERN = f"^[^{_NAME_FORBIDDEN}]+$"


def check_name(name: str) -> str:
    """A display name as the schema's ``NAME_PATTERN`` says (plus no lone surrogates); ValueError otherwise."""
    bad = next((c for c in name if 0xD800 <= ord(c) <= 0xDFFF or _forbidden(c)), None)
    if bad is not None:
        raise ValueError(f"name must not contain control, bidirectional-override or surrogate characters "
                         f"(found U+{ord(bad):04X})")
    return name


def _forbidden(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7F <= o <= 0x9F or o in (0x61C, 0x200E, 0x200F) or 0x202A <= o <= 0x202E or \
        0x2066 <= o <= 0x2069


class JobCreate(ExperimentSpec):
    """An experiment spec plus an optional display name: a spec file is a valid body."""

    name: str | None = Field(default=None, min_length=1, max_length=100, json_schema_extra={"pattern": NAME_PATTERN},
                             description="display name; no control or bidirectional-override characters")

    @field_validator("name")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v)


class Progress(BaseModel):
    epoch: int = Field(description="epochs completed")
    epochs: int
    step: int = Field(description="steps completed")
    total_steps: int
    loss: float | None = None
    train_acc: float | None = None
    test_acc: float | None = None
    images_per_sec: float | None = None
    updated_at: datetime | None = None


class JobPublic(BaseModel):
    id: str
    name: str
    state: JobState
    reason: str | None = None
    message: str | None = None
    spec: dict[str, Any]
    changes: dict[str, Any] = Field(default_factory=dict, description="what the spec sets beyond the defaults of "
                                    "its architecture and data set, as --set keys (model.kernel_size: 5)")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int
    progress: Progress | None = None
    environment: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None
    layers: list[dict[str, Any]] | None = None
    steps_per_epoch: int | None = None
    diverged_at_step: int | None = None

    @model_validator(mode="after")
    def _spec_changes(self) -> JobPublic:
        """``changes`` is read from the spec (the store keeps only the spec); times arrive as Unix seconds."""
        if not self.changes:
            self.changes = _changes(self.spec)
        return self


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class MetricsPublic(BaseModel):
    job_id: str
    state: JobState
    epochs: list[dict[str, Any]]
    final: dict[str, Any] | None = None
    per_class: list[dict[str, Any]] | None = None
    confusion: list[list[int]] | None = None
    layer_means: dict[str, dict[str, list[float | None]]] | None = Field(
        default=None, description="norm kind -> layer -> mean norm per epoch (finished jobs)")


class LayerInfo(BaseModel):
    name: str
    path: str | None = None
    role: Literal["stem", "main", "reduce", "shortcut", "classifier"] = Field(
        "main", description="stem and main: the main path (conv1..convN); reduce: a 1x1 bottleneck conv before "
                            "conv<N>; shortcut: a 1x1 projection shortcut; classifier: a linear layer")
    depth: int
    relative_depth: float


class SeriesPublic(BaseModel):
    job_id: str
    kind: Literal["weight", "activation", "global"]
    records: int = Field(description="entries recorded in the requested range, before downsampling (activation "
                                     "norms are sampled: one entry every tracking.activation_every steps)")
    total_steps: int = Field(description="training steps from the range's first recorded step to its last, as in "
                                         "progress.total_steps: the same meaning for every norm kind")
    downsampled: bool
    layers: list[LayerInfo]
    steps: list[int]
    values: list[list[float | None]] = Field(description="one list per layer, aligned with steps; NaN/inf: null")


class HistogramsPublic(BaseModel):
    job_id: str
    edges_log10: list[float] = Field(description="bin edges as log10 |gradient|; the first bin also holds every "
                                                 "smaller value (zeros included), the last every larger one and "
                                                 "NaN/inf")
    recorded_steps: int = Field(description="steps with histograms (one every tracking.histogram_every steps)")
    first_step: int | None = None
    last_step: int | None = None
    steps: list[int]
    layers: list[LayerInfo]
    counts: list[list[list[float]]] = Field(description="[step][layer][bin]: weight-gradient elements per bin")


class CostPublic(BaseModel):
    spec: dict[str, Any] = Field(description="the resolved spec")
    cost: dict[str, Any] = Field(description="parameters, FLOPs (1 multiply-add = 2 FLOPs) and activation bytes "
                                             "per image, per conv and linear layer, of the full-size model")
    memory: dict[str, Any] = Field(description="estimated peak memory of the job (host, and device on a GPU), "
                                               "by part; this server's budget for one job and whether it fits")
    limit_errors: list[str] = Field(description="why POST /jobs would refuse this spec here (empty: it would not)")


class ErrorMessage(BaseModel):
    detail: str = Field(description="what went wrong, and what to do about it")


_ERROR_TEXT = {
    400: "the body is not readable as JSON text",
    401: "token missing or wrong",
    404: "no such job, or the data asked for were never recorded",
    409: "not possible in the job's state (or an Idempotency-Key reused with another body)",
    413: "request body over the limit (DEEPGRAD_MAX_BODY_BYTES)",
    429: "the queue is full (DEEPGRAD_MAX_QUEUED)",
    503: "too many figures or cost reports being computed; retry after Retry-After seconds",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each ``{"detail": "..."}``."""
    return {code: {"model": ErrorMessage, "description": _ERROR_TEXT[code]} for code in codes}


def json_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``errors`` for a route whose own responses are not JSON (an event stream): the errors still are."""
    ref = {"schema": {"$ref": "#/components/schemas/ErrorMessage"}}
    return {code: {"description": _ERROR_TEXT[code], "content": {"application/json": ref}} for code in codes}


class Health(BaseModel):
    status: str
    version: str
    queued: int
    running: int
    worker: Literal["alive", "stopped", "disabled"]
    executor: Literal["local", "ray"] = "local"
    slots: int | None = Field(default=None, description="jobs the executor can run at once now (Ray: by the "
                              "cluster's alive nodes); None without a worker")


def _changes(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return spec_changes(ExperimentSpec.model_validate(spec))
    except ValueError:  # a spec an older version stored and this one refuses: shown as it is, no changes
        return {}


def job_public(job: Job) -> JobPublic:
    return JobPublic.model_validate(job, from_attributes=True)


PresetName = Literal[tuple(PRESETS)]


class StudyCreate(BaseModel):
    """A study: a base spec varied by a grid or a list of points, or a preset by name; ``set`` overrides fields
    of the base (``{"train.epochs": 2}``)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=80, json_schema_extra={"pattern": NAME_PATTERN},
                             description="display name (default: the preset's name, or 'study')")
    preset: PresetName | None = Field(default=None, description="a preset's name (GET /presets): its base and "
                                      "points; then give neither grid nor points")
    base: dict[str, Any] | None = Field(default=None, description="the spec every job starts from (with a "
                                        "preset: merged over the preset's base)")
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] | None = Field(
        default=None, min_length=1, description='key -> values: one job per combination, e.g. {"model.kernel_size": '
                                                "[3, 5, 7]}; give grid or points, not both")
    points: list[dict[str, Any]] | None = Field(default=None, min_length=1, description="one job per entry, each a "
                                                'set of overrides, e.g. [{"model.arch": "vgg16"}, ...]')
    set: dict[str, Any] = Field(default_factory=dict, description="overrides of the base for every job, e.g. "
                                '{"train.epochs": 2, "model.width": 0.25}')

    @field_validator("name")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v)


class StudyJobPublic(BaseModel):
    position: int
    label: str = Field(description="what this job varies, e.g. 'kernel_size=5, pooling=avg'")
    overrides: dict[str, Any]
    job: JobPublic


class StudyPublic(BaseModel):
    id: str
    name: str
    preset: str | None = None
    base: dict[str, Any]
    grid: dict[str, Any] | None = None
    points: list[Any] | None = None
    created_at: datetime
    state: Literal["queued", "running", "ended"] = Field(description="ended: every job ended (see each job)")
    counts: dict[str, int] = Field(description="jobs per state")
    jobs: list[StudyJobPublic] = Field(default_factory=list)


class StudiesPublic(BaseModel):
    data: list[StudyPublic] = Field(description="studies, newest first (without their jobs)")
    count: int


class StudyRow(BaseModel):
    position: int
    job_id: str
    label: str
    overrides: dict[str, Any]
    state: JobState
    train_acc: float | None = None
    test_acc: float | None = None
    train_loss: float | None = None
    test_loss: float | None = None
    seconds: float | None = None
    params: int | None = None
    flops_per_image: float | None = None
    first_last_ratio: float | None = Field(default=None, description="first/last main-path layer gradient ratio "
                                           "of the verdict's kind, last epoch")
    ratio_kind: str | None = None
    vanishing: bool | None = None


class StudySummary(BaseModel):
    study_id: str
    name: str
    varied: list[str] = Field(description="the keys the study varies, in order")
    rows: list[StudyRow]


class Preset(BaseModel):
    name: str
    description: str
    base: dict[str, Any]
    grid: dict[str, list[Any]] | None = None
    points: list[dict[str, Any]] | None = None
    jobs: int
