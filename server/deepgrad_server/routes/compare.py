"""Several jobs side by side: metrics aligned by epoch, gradient norms aligned by relative depth, spec differences."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter

from deepgrad_server import store
from deepgrad_server.deps import DbDep, Ids, load_job, parse_ids
from deepgrad_server.jobdata import last_epoch_means, layer_info
from deepgrad_server.schemas import errors

router = APIRouter(tags=["compare"])

EPOCH_FIELDS = ("train_loss", "train_acc", "test_loss", "test_acc")


@router.get("/compare", responses=errors(404))
def compare(db: DbDep, ids: Ids) -> dict[str, Any]:
    """Final metrics, cost and vanishing summary per job; history by epoch; mean norms by relative depth; the spec
    keys whose values differ between the jobs."""
    jobs = [load_job(db, i) for i in parse_ids(ids)]
    rows, histories, by_depth = [], {}, {}
    for job in jobs:
        with db.reading() as s:
            histories[job.id] = {m["epoch"]: m for m in store.epochs(s, job_id=job.id)}
        cost = job.cost or {}
        final = job.final or {}
        rows.append({"id": job.id, "name": job.name, "state": job.state, "reason": job.reason,
                     "arch": job.spec["model"]["arch"], "spec": job.spec, "final": job.final, "summary": job.summary,
                     "params": cost.get("total_params"), "flops_per_image": cost.get("flops_per_image"),
                     "seconds": final.get("seconds", sum(m.get("seconds", 0) for m in histories[job.id].values())),
                     "epochs_completed": len(histories[job.id])})
        means = last_epoch_means(db, job)  # the last epoch's rows only: bounded however long the series
        by_depth[job.id] = [] if means is None else [
            {"layer": info["name"], "depth": info["depth"], "relative_depth": info["relative_depth"],
             "mean_norm": float(m) if np.isfinite(m) else None}
            for info, m in zip(layer_info(job, means[0]), means[1], strict=True)]
    epochs = sorted({e for h in histories.values() for e in h})
    by_epoch = [{"epoch": e, "jobs": {jid: ({k: h[e].get(k) for k in EPOCH_FIELDS} if e in h else None)
                                      for jid, h in histories.items()}} for e in epochs]
    return {"jobs": rows, "by_epoch": by_epoch, "by_depth": by_depth, "differences": spec_differences(jobs)}


def spec_differences(jobs: list[Any]) -> list[dict[str, Any]]:
    """``[{"key": "model.arch", "values": [<each job's value, in order>]}]`` for every spec key (as ``--set`` keys)
    whose values are not all equal (a key a job lacks: null)."""
    specs = [flat(job.spec or {}) for job in jobs]
    keys = list(dict.fromkeys(k for spec in specs for k in spec))
    return [{"key": k, "values": [spec.get(k) for spec in specs]} for k in keys
            if len({json.dumps(spec.get(k), sort_keys=True) for spec in specs}) > 1]


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"arch": "vgg16"}}`` -> ``{"model.arch": "vgg16"}`` (as ``--set`` keys)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
