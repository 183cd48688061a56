"""
mlx-lm-kvq benchmarks (`make bench`): quality, memory and speed of the KV
cache settings on both trained models, SmolLM2-135M-Instruct and Gemma 3
270M, and the default path of the fork vs pristine mlx-lm 0.32.2. Every
number on the page is measured by these scripts; speeds are ratios taken
within the same run.

Run through tools/run (OpenBLAS, offline, the model paths, MLX_LM_PRISTINE):

    tools/run python benchmarks/run.py                 # everything, then the page
    tools/run python benchmarks/run.py quality memory  # some parts, then the page
    tools/run python benchmarks/run.py page            # the page from the JSON files
    tools/run python benchmarks/run.py --quick         # every part on minimal sizes
    BENCH_QUICK=1 make bench                           # the same

Parts: quality (perplexity, KL, top-1, bytes; the planner's quality tables),
memory (bytes vs theory, a long bounded generation), speed (decode and
prefill vs float), server (8 streams float vs K8V4; 16 concurrent requests
bounded), default (fork vs pristine with no KV flags, SmolLM2 only).

Each part writes <out>/benchmarks/<part>_<model>.json, and quality
<out>/benchmarks/kv_quality_<model>.json; the page <out>/benchmarks.md is
rebuilt from whatever JSON files exist. <out> is docs/ of the repository,
or /tmp/mlx-lm-kvq-bench-quick with --quick.
"""

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as common  # noqa: E402

PARTS = ("quality", "memory", "speed", "server", "default")


def run_part(part, key, out, args):
    import importlib

    module = importlib.import_module(f"bench_{part}")
    start = {"date": common.now(), "load_avg": common.loadavg()}
    common.log(f"== {part} {key}{' (quick)' if args.quick else ''}, load {start['load_avg']}")
    t = time.perf_counter()
    kwargs = {"windows": args.windows} if part == "quality" else {}
    result = module.run(key, quick=args.quick, **kwargs)
    wall = time.perf_counter() - t
    result["meta"] = dict(
        common.machine(), part=part, model_key=key, quick=args.quick,
        started=start["date"], load_avg_start=start["load_avg"],
        load_avg_end=common.loadavg(), wall_seconds=round(wall, 1),
        command=" ".join(shlex.quote(a) for a in ["benchmarks/run.py"] + sys.argv[1:]),
    )
    common.save_json(common.result_path(out, part, key), result)
    if part == "quality":
        import bench_quality

        common.save_json(common.result_path(out, "kv_quality", key),
                         bench_quality.planner_table(result))
    common.log(f"== {part} {key} done in {wall / 60:.1f} min")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", choices=PARTS + ("page", "all"), default=[],
                        help="parts to run (default: all, then the page)")
    parser.add_argument("--quick", action="store_true",
                        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
                        help="every part on minimal sizes, to test the harness "
                        "(default with BENCH_QUICK=1); writes to "
                        f"{common.QUICK_OUT} unless --out is given")
    parser.add_argument("--models", default=",".join(common.MODELS),
                        help="comma-separated models (default: %(default)s)")
    parser.add_argument("--windows", type=int, default=None,
                        help="quality: at most this many windows (default: all the "
                        "texts hold)")
    parser.add_argument("--out", type=Path, default=None,
                        help="docs directory of the page and JSON files "
                        "(default: docs/ of the repository)")
    args = parser.parse_args(argv)
    out = args.out or (common.QUICK_OUT if args.quick else common.DOCS)
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in common.MODELS:
            parser.error(f"unknown model {m!r}; known: {', '.join(common.MODELS)}")
    parts = [p for p in args.parts if p != "page"]
    if not args.parts or "all" in args.parts:
        parts = list(PARTS)

    import bench_page

    t = time.perf_counter()
    failed = []
    for part in PARTS:
        if part not in parts:
            continue
        for key in (["smollm2"] if part == "default" else models):
            try:
                run_part(part, key, out, args)
            except Exception as e:  # the other parts go on; reported at the end
                import traceback

                traceback.print_exc()
                failed.append(f"{part} {key}: {type(e).__name__}: {e}")
            bench_page.write(out)
    bench_page.write(out)
    common.log(f"total {(time.perf_counter() - t) / 60:.1f} min; page: {out / 'benchmarks.md'}")
    if failed:
        sys.exit("failed:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
