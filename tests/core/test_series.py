"""deepgrad_core.series: min/max downsampling that streams block by block, per-epoch means, CSV text."""

from __future__ import annotations

import io

import numpy as np
import pytest

from deepgrad_core.series import EpochMeans, MinMax, csv_header, csv_rows, downsample, epoch_means


def _reference(steps: np.ndarray, values: np.ndarray, max_points: int, nonfinite: str) -> tuple:
    """Bucket by bucket, in plain Python: what MinMax must give."""
    n = len(steps)
    if n <= max_points:
        return steps, values.astype(np.float64)
    size = -(-n // max(max_points // 2, 1))
    out_steps, out_rows = [], []
    for b in range(0, n, size):
        v = values[b:b + size].astype(np.float64)
        first, second = [], []
        for col in v.T:
            fin = np.isfinite(col)
            if not fin.any():
                lo = hi = np.nan if nonfinite == "hide" else col[0]
                first.append(lo)
                second.append(hi)
                continue
            lo_i = int(np.argmin(np.where(fin, col, np.inf)))
            hi_i = int(np.argmax(np.where(fin, col, -np.inf)))
            a, c = (col[lo_i], col[hi_i]) if lo_i <= hi_i else (col[hi_i], col[lo_i])
            if nonfinite == "show" and not fin.all():
                c = col[int(np.argmax(~fin))]
            first.append(a)
            second.append(c)
        if len(v) == 1:
            out_steps.append([steps[b]])
            out_rows.append([first])
        else:
            out_steps.append([steps[b], steps[min(b + size, n) - 1]])
            out_rows.append([first, second])
    return np.concatenate(out_steps), np.concatenate(out_rows)


@pytest.mark.parametrize("n", [1, 7, 999, 1000, 1001, 10_007])
@pytest.mark.parametrize("max_points", [2, 3, 10, 1000])
@pytest.mark.parametrize("nonfinite", ["show", "hide"])
def test_minmax_streamed_in_any_blocks_equals_the_reference(n: int, max_points: int, nonfinite: str) -> None:
    rng = np.random.default_rng(n + max_points)
    steps = np.arange(n, dtype=np.int64) * 3 + 5
    values = rng.lognormal(0, 2, (n, 3)).astype(np.float32)
    values[rng.random((n, 3)) < 0.01] = np.nan
    values[rng.random((n, 3)) < 0.005] = np.inf
    if n > 10:
        values[2:9, 1] = np.nan  # a bucket (or part of one) with nothing finite
        values[n // 2] = values[n // 2 - 1]  # ties: the earlier one is the extreme
    want = _reference(steps, values, max_points, nonfinite)
    for cuts in ([n], [1] * min(n, 50) + [max(n - 50, 0)], list(rng.integers(1, 400, 60))):
        reducer = MinMax(n, max_points, nonfinite=nonfinite)
        at = 0
        for size in cuts:
            reducer.add(steps[at:at + size], values[at:at + size])
            at += size
        reducer.add(steps[at:], values[at:])
        got = reducer.result()
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert len(got[0]) <= max(max_points, 1) or n <= max_points


def test_downsample_keeps_spikes_and_shows_divergence() -> None:
    steps = np.arange(100_000)
    values = np.ones((100_000, 2), np.float32)
    values[77_777, 0] = 1e6
    values[4_242, 1] = np.nan
    out_steps, out = downsample(steps, values, 100)
    assert len(out_steps) <= 100 and out[:, 0].max() == 1e6 and np.isnan(out[:, 1]).sum() == 1
    hidden = downsample(steps, values, 100, nonfinite="hide")[1]
    assert not np.isnan(hidden).any() and hidden[:, 0].max() == 1e6


def test_epoch_means_streamed_equal_one_pass() -> None:
    rng = np.random.default_rng(0)
    steps = np.arange(1000)
    values = rng.random((1000, 4))
    values[500, 2] = np.nan
    acc = EpochMeans(steps_per_epoch=300)
    for a in range(0, 1000, 77):
        acc.add(steps[a:a + 77], values[a:a + 77])
    epochs, means = acc.result()
    want_epochs, want, bad = epoch_means(steps, values, 300)
    assert epochs == want_epochs == [0, 1, 2, 3] and acc.nonfinite_steps == bad == 1
    np.testing.assert_allclose(means, want)
    np.testing.assert_allclose(means[1, 2], np.nanmean(values[300:600, 2]))


def test_csv_rows_round_trip_float32() -> None:
    values = np.array([[1.0, np.nan], [np.inf, 3.1415927e-7]], np.float32)
    text = csv_header(("a", "b")) + csv_rows(np.array([0, 10]), values)
    back = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1)
    assert text.splitlines()[0] == "step,a,b"
    np.testing.assert_array_equal(back[:, 1:].astype(np.float32), values)
