"""Does a finished job's figure come from the cache? Median ms per plot kind through the server's app,
rendered (the cache emptied before each request) vs cached, side by side in one run.

The job is the 100-epoch ResNet-18-sized one `bench/api.py` seeds (20 layers x 39,100 steps of weight
norms, activation norms every 10th step, 100 epochs of metrics, cost, filters), stored in a SQLite file
in a temporary directory. Requests go through the real app in-process (``fastapi.testclient``: routing,
auth, store, render, PNG), without sockets. Targets (issue 5): <= 300 ms uncached, <= 10 ms cached.

    python bench/plot_cache.py               # ~30 s on 2 CPU cores
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware  # noqa: E402
from api import seed_finished_job  # noqa: E402  (bench/api.py: the same seeded job)

from deepgrad_core.plots import JOB_KINDS  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
UNCACHED_MS, CACHED_MS = 300.0, 10.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=20, help="cached requests per kind")
    p.add_argument("--uncached", type=int, default=5, help="uncached requests per kind (cache emptied before each)")
    args = p.parse_args(argv)
    from fastapi.testclient import TestClient

    from deepgrad_server.app import create_app
    from deepgrad_server.settings import Settings

    print(f"# plot cache  {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"# hardware: {hardware()}  Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), token=TOKEN, worker=False)
        job_id = seed_finished_job(settings.resolved_database_url)
        ok = True
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            # One render with other parameters first: matplotlib's one-time costs (fonts, first draw) are not
            # what a figure costs, and this key is never asked for again.
            assert client.get(f"/jobs/{job_id}/plots/norms.png", params={"smooth": 3}).status_code == 200
            print(f"{'kind':<10} {'uncached median ms':>19} {'cached median ms':>17} "
                  f"{'cached p95 ms':>14} {'ratio':>6}")
            cache = client.app.state.plot_cache
            for kind in JOB_KINDS:
                url = f"/jobs/{job_id}/plots/{kind}.png"
                rendered = []
                for _ in range(args.uncached):
                    cache.drop(job_id)  # as if no one had asked yet
                    t0 = time.perf_counter()
                    first = client.get(url)
                    rendered.append((time.perf_counter() - t0) * 1000)
                    assert first.status_code == 200, first.text
                cached = []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    r = client.get(url)
                    cached.append((time.perf_counter() - t0) * 1000)
                    assert r.content == first.content
                slow, fast = statistics.median(rendered), statistics.median(cached)
                p95 = sorted(cached)[int(0.95 * (len(cached) - 1))]
                ok &= slow <= UNCACHED_MS and fast <= CACHED_MS
                print(f"{kind:<10} {slow:>19.1f} {fast:>17.2f} {p95:>14.2f} {slow / fast:>5.0f}x")
    print(f"# targets: uncached <= {UNCACHED_MS:.0f} ms, cached <= {CACHED_MS:.0f} ms: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
