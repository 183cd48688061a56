"""
Benchmarks of mlx-lm-kvq's quantized and bounded KV caches on the default
model (SmolLM2-135M-Instruct, float32): quality (perplexity), memory (cache
bytes) and speed (decode and prefill, as ratios to the float cache measured
in the same run).

Run through tools/run (OpenBLAS, offline, MLX_LM_KVQ_DEFAULT_MODEL):

    tools/run python benchmarks/run.py            # all parts, then the page
    tools/run python benchmarks/run.py speed      # one part, then the page
    tools/run python benchmarks/run.py page       # the page from the JSONs
    tools/run python benchmarks/run.py --quick    # smoke run, to /tmp

Each part saves its raw results in docs/benchmarks/<part>.json; the page
(docs/benchmarks.md, plots in docs/benchmarks/) is rebuilt from the JSONs
that exist, so parts can be rerun alone.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import DOCS, QUICK_OUT, environment, log, save_json  # noqa: E402

PARTS = ("quality", "memory", "speed", "server", "profile")
# Parts that `all` leaves out (too long for the budget): run them by name.
EXTRA = ("kl",)
# Share of the time budget of each part (`all` runs them in this order).
# Quality gets the most: 24 passes over its windows (every quantized setting
# plain and rotated, three with mx.quantize's grids) at ~100 tok/s on 2
# quiet cores, then the rotation targets on as many more windows as fit.
SHARE = {"quality": 0.5, "memory": 0.12, "speed": 0.2, "server": 0.14, "profile": 0.04}


def run_part(name, out, quick, argv, budget):
    import importlib

    module = importlib.import_module(f"bench_{name}")
    env = environment(argv)
    log(f"== {name}{' (quick)' if quick else ''}")
    t = time.perf_counter()
    result = module.run(quick=quick, budget=budget)
    wall = time.perf_counter() - t
    result["meta"] = dict(env, part=name, quick=quick, wall_seconds=round(wall, 1),
                          budget_seconds=None if quick else round(budget))
    save_json(out / "benchmarks", name, result)
    log(f"== {name} done in {wall / 60:.1f} min")
    return wall


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "part", nargs="?", default="all", choices=("all", "page") + PARTS + EXTRA,
        help="what to run (default: all parts, then the page)",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="small sizes, a smoke run of a couple of minutes; writes to "
        f"{QUICK_OUT} unless --out is given",
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help=f"docs directory: <out>/benchmarks.md, <out>/benchmarks/*.json|png "
        f"(default: {DOCS.relative_to(DOCS.parent)}/ of the repo)",
    )
    parser.add_argument(
        "--budget", type=float, default=28, metavar="MINUTES",
        help="time budget of all parts together (default: 28); each part gets its "
        "share (" + ", ".join(f"{k} {v * 100:.0f}%%" for k, v in SHARE.items()) + ") and "
        "scales down (fewer windows, tokens, steps; never below a floor) when the "
        "machine is slower than planned. Ignored with --quick.",
    )
    args = parser.parse_args(argv)
    out = args.out or (QUICK_OUT if args.quick else DOCS)

    import bench_page

    t = time.perf_counter()
    if args.part != "page":
        parts = PARTS if args.part == "all" else (args.part,)
        for name in parts:
            run_part(name, out, args.quick, argv, SHARE.get(name, 0) * args.budget * 60)
            bench_page.write(out)  # the page so far, in case a later part fails
    else:
        bench_page.write(out)
    log(f"total {(time.perf_counter() - t) / 60:.1f} min; page: {out / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
