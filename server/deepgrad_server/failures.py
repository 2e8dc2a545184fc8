"""Why a job failed, in words a user can act on: each failure gets a reason (``error``, ``out_of_memory``,
``data_missing``, ``disk_full``) and a message that says what to change."""

from __future__ import annotations

import errno


class JobFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def classify(err: BaseException) -> JobFailure:
    from deepgrad_core.data import DataError

    text = f"{type(err).__name__}: {err}"[:1500]
    if isinstance(err, DataError):
        return JobFailure("data_missing", str(err)[:1500])
    if _is_oom(err):
        return JobFailure("out_of_memory", f"out of memory: {str(err)[:800]}; lower train.batch_size or "
                                           "model.width, or use train.precision bf16")
    if _is_disk_full(err):
        return JobFailure("disk_full", f"no space left on the server's disk: {str(err)[:800]}")
    return JobFailure("error", text)


def _is_oom(err: BaseException) -> bool:
    import torch

    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    msg = str(err)
    return isinstance(err, RuntimeError) and ("can't allocate memory" in msg or "out of memory" in msg)


def _is_disk_full(err: BaseException) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        msg = str(seen).lower()
        if "database or disk is full" in msg or "no space left" in msg:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
