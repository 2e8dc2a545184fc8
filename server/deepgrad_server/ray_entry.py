"""The entrypoint of a job on a Ray cluster (``python -m deepgrad_server.ray_entry``, started by
``ray_executor.RayExecutor``): reads its ``Launch`` from ``$DEEPGRAD_LAUNCH`` and runs the job as a local job
process does (``executors.child_main``: SIGTERM stops it after its current step; its exit code says why it
failed when it could not record that itself)."""

from __future__ import annotations

import json
import os
import sys

from deepgrad_server.executors import child_main
from deepgrad_server.ray_executor import LAUNCH_ENV
from deepgrad_server.runner import Launch


def main() -> int:
    raw = os.environ.get(LAUNCH_ENV)
    if not raw:
        sys.stderr.write(f"deepgrad_server.ray_entry: ${LAUNCH_ENV} is not set (this runs jobs started by "
                         "deepgrad-server --executor ray)\n")
        return 2
    child_main(Launch(**json.loads(raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
