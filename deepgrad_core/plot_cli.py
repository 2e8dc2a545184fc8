"""``deepgrad-plot``: draw a figure (or all of them) from a ``deepgrad-train`` run folder, no server needed.

    deepgrad-plot runs/vgg_deep heatmap -o heatmap.png
    deepgrad-plot runs/vgg_deep depth --main-path --epochs 1,10
    deepgrad-plot runs/vgg_deep all            # every figure into runs/vgg_deep/plots/

Exit codes: 0 written; 1 the run lacks what the figure needs; 2 usage (a bad kind, folder or option).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

KINDS = ("norms", "selected", "heatmap", "depth", "ratio", "metrics", "filters", "cost")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deepgrad-plot", description="Draw figures of a deepgrad-train run folder.")
    p.add_argument("run", type=Path, help="the run folder (deepgrad-train's --out, e.g. runs/vgg_deep)")
    p.add_argument("kind", choices=(*KINDS, "all"), help="the figure, or 'all' for every one the run has data for")
    p.add_argument("-o", "--output", type=Path, help="PNG file (one kind; default <run>/plots/<kind>.png) or "
                   "folder (all; default <run>/plots)")
    p.add_argument("--norm-kind", choices=("weight", "activation", "global"), default="weight")
    p.add_argument("--layers", help="comma-separated layer names (norms, selected, heatmap, depth)")
    p.add_argument("--epochs", help="comma-separated epochs counted from 1 (depth)")
    p.add_argument("--smooth", type=int, default=0, help="moving-average window in records")
    p.add_argument("--main-path", action="store_true", help="depth: only the stem and main-path convs")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        from deepgrad_core.plots import PlotDataError, render_job, to_png
        from deepgrad_core.plots.files import RunFolderError, load_run, write_figures
    except ImportError as err:
        sys.stderr.write(f"deepgrad-plot needs the server extra: pip install 'deepgrad[server]' ({err.name} is "
                         "not installed)\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = {"layers": [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None,
               "smooth": args.smooth}
    try:
        if args.kind == "all":
            written = write_figures(args.run, args.output or args.run / "plots", **options)
            sys.stdout.write("".join(f"wrote {path}\n" for path in written))
            return 0 if written else 1
        epochs = [int(e) for e in args.epochs.split(",")] if args.epochs else None
        fig = render_job(args.kind, load_run(args.run), norm_kind=args.norm_kind, epochs=epochs,
                         main_path=args.main_path, **options)
        output = args.output or args.run / "plots" / f"{args.kind}.png"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(to_png(fig))
        sys.stdout.write(f"wrote {output}\n")
        return 0
    except RunFolderError as err:
        sys.stderr.write(f"deepgrad-plot: {err}\n")
        return 2
    except PlotDataError as err:
        sys.stderr.write(f"deepgrad-plot: {err}\n")
        return 1
    except ValueError as err:  # a parameter the figure cannot use (PlotParameterError), a bad --epochs
        sys.stderr.write(f"deepgrad-plot: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
