#!/usr/bin/env python3
"""Run upstream's test suite on pristine 0.32.2 and on the fork; compare.

Both runs are offline (tools/run, the stand-in hub, tools/pytest_offline.py).
Prints pass/skip/fail counts for each and every upstream test that passes on
pristine but not on the fork; exits 1 if there is one. The fork is the
working tree, or with --upstream-track the upstream track of patches/series
alone, applied to a fresh temp dir. Run it through tools/run:
`tools/run python tools/compare_upstream.py [--upstream-track]`.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import patchq  # noqa: E402


# Upstream tests that a patch changes on purpose, because the behaviour they
# pin is what the patch changes. Name the patch by its subject.
CHANGED = {
    "tests.test_server.TestServerKVCacheQuantization::"
    "test_quantized_kv_disables_batching": "the upstream-track patch \"server: "
    "keep continuous batching with --kv-bits, add --max-kv-size\" keeps "
    "batching on with --kv-bits; the test is now test_quantized_kv_keeps_batching",
}


def run_suite(tree, tests, junit, extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{tree}{os.pathsep}{ROOT / 'tools'}"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["-p", "pytest_offline", "--timeout=600", f"--junitxml={junit}"]
    subprocess.run(cmd + extra + tests, cwd=tree, env=env)
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            outcomes[name] = "failed"
        elif "skipped" in kinds:
            outcomes[name] = "skipped"
        else:
            outcomes[name] = "passed"
    return outcomes


def counts(outcomes):
    c = {k: 0 for k in ("passed", "skipped", "failed")}
    for v in outcomes.values():
        c[v] += 1
    return c


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--upstream-track", action="store_true",
        help="compare with the upstream track alone instead of the working tree",
    )
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    patchq.materialize()
    with tempfile.TemporaryDirectory(prefix="kvq-upstream-") as tmp:
        tmp = Path(tmp)
        pristine = tmp / "pristine"
        patchq.unpack(patchq.fetch_sdist(), pristine)
        upstream_tests = sorted(p.name for p in (pristine / "tests").glob("test_*.py"))
        tests = [f"tests/{t}" for t in upstream_tests]
        fork, label = ROOT, "fork"
        if args.upstream_track:
            fork = tmp / "upstream-track"
            fork.mkdir()
            patchq.init_queue(fork / ".git", fork, patchq.fetch_sdist())
            n = patchq.apply_series(fork / ".git", fork, upstream_only=True)
            label = f"upstream track ({n} patches)"
        before = run_suite(pristine, tests, tmp / "pristine.xml", args.pytest_args)
        after = run_suite(fork, tests, tmp / "fork.xml", args.pytest_args)

    print(f"upstream test files: {len(tests)}")
    w = max(len("pristine 0.32.2"), len(label)) + 2
    print(f"{'pristine 0.32.2:':<{w}}{counts(before)}")
    print(f"{label + ':':<{w}}{counts(after)}")
    regressions = [
        t
        for t, o in before.items()
        if o == "passed" and after.get(t) != "passed" and t not in CHANGED
    ]
    for t, why in CHANGED.items():
        print(f"changed on purpose: {t}: {why}")
    for t in regressions:
        print(f"REGRESSION: {t} passes on pristine, {after.get(t, 'missing')} on the {label}")
    if not regressions:
        print(f"no upstream test that passes on pristine fails on the {label}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
