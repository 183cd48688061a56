#!/usr/bin/env python3
"""The patch queue: pristine upstream mlx-lm + patches/ = the fork's tree.

    materialize   unpack the pinned upstream sdist into mlx_lm/ and tests/,
                  commit it as the base of the queue git (.queue/git), then
                  `git am` every patch of patches/series. Idempotent.
    export        write the queue (upstream..HEAD) to patches/ (deterministic)
    check         fresh temp dir: apply the series patch by patch with plain
                  `git am`, run the tests each patch adds or changes, compare
                  the result with the working tree
    git ARGS      run git on the queue (the tree's own history)
    build DIR     write a patched mlx_lm/ into DIR (used by setup.py)

The repository's own git never tracks mlx_lm/ or tests/; the queue git never
tracks anything else.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "patches"
QUEUE = ROOT / ".queue"
QGIT = QUEUE / "git"
STATE = QUEUE / "state.json"
PRISTINE = QUEUE / "pristine"
TREES = ("mlx_lm", "tests")

UPSTREAM = "mlx-lm==0.32.2"
SDIST = "mlx_lm-0.32.2.tar.gz"
SDIST_SHA256 = "1af8a92f6a141c3e2bf5b0369ac4464203a8e2189c47b9e40d3e921e5b3a1fe9"
BASE_TAG = "upstream"

# Fixed identities and dates keep the queue's hashes and the export stable.
GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "mlx-lm-kvq",
    "GIT_AUTHOR_EMAIL": "mlx-lm-kvq@users.noreply.github.com",
    "GIT_COMMITTER_NAME": "mlx-lm-kvq",
    "GIT_COMMITTER_EMAIL": "mlx-lm-kvq@users.noreply.github.com",
}
BASE_DATE = "2026-01-01T00:00:00+00:00"
EXCLUDE = "/*\n!/mlx_lm/\n!/tests/\n__pycache__/\n*.pyc\n.pytest_cache/\n"
# The repository's .gitignore hides mlx_lm/ and tests/ from its own git; the
# queue git reads that file too, so it adds with -f and these pathspecs.
ADD = ["add", "-A", "-f", "--", *TREES, ":!*__pycache__*", ":!*.pyc", ":!*.pytest_cache*"]


class QueueError(Exception):
    pass


def home():
    return Path(
        os.environ.get("MLX_LM_KVQ_HOME", Path.home() / ".cache" / "mlx-lm-kvq")
    )


def log(msg):
    print(f"patchq: {msg}", file=sys.stderr)


def git(*args, git_dir=QGIT, work_tree=ROOT, check=True, capture=True, env=None):
    cmd = ["git", f"--git-dir={git_dir}", f"--work-tree={work_tree}", *args]
    full_env = {**os.environ, **GIT_ENV, **(env or {})}
    p = subprocess.run(
        cmd, cwd=work_tree, env=full_env, text=True, capture_output=capture
    )
    if check and p.returncode != 0:
        out = (p.stdout or "") + (p.stderr or "")
        raise QueueError(f"git {' '.join(args)} failed:\n{out.strip()}")
    return p.stdout.strip() if capture else ""


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_sdist():
    """Return the path of the pinned, checksum-verified upstream sdist."""
    dest = home() / "sdist"
    path = dest / SDIST
    if not path.exists():
        dest.mkdir(parents=True, exist_ok=True)
        log(f"downloading {UPSTREAM} (sdist) with pip")
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps"]
            cmd += ["--no-binary", ":all:", "-q"]
            subprocess.run(cmd + ["-d", tmp, UPSTREAM], check=True)
            got = list(Path(tmp).glob("*.tar.gz"))
            if [p.name for p in got] != [SDIST]:
                raise QueueError(f"pip download gave {got}, expected {SDIST}")
            got[0].rename(path)
    digest = sha256(path)
    if digest != SDIST_SHA256:
        raise QueueError(
            f"{path}: sha256 {digest} does not match the pinned "
            f"{SDIST_SHA256} of {UPSTREAM}; refusing to use it. "
            "Delete the file to download it again."
        )
    return path


def unpack(sdist, dest, members=TREES):
    """Extract the given top-level folders of the sdist into dest."""
    prefix = SDIST[: -len(".tar.gz")] + "/"
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            if not m.name.startswith(prefix):
                continue
            rel = m.name[len(prefix) :]
            if rel.split("/")[0] not in members or not (m.isfile() or m.isdir()):
                continue
            m.name = rel
            tar.extract(m, dest, filter="data")


def upstream_pyproject():
    """The upstream pyproject.toml text (setup.py reads deps and scripts)."""
    prefix = SDIST[: -len(".tar.gz")] + "/"
    with tarfile.open(fetch_sdist()) as tar:
        return tar.extractfile(prefix + "pyproject.toml").read().decode()


def series():
    path = PATCHES / "series"
    if not path.exists():
        return []
    names = [l.strip() for l in path.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    for n in names:
        if not (PATCHES / n).is_file():
            raise QueueError(f"patches/series names {n}, which does not exist")
    return names


def patches_digest():
    h = hashlib.sha256()
    for name in series():
        h.update(name.encode() + b"\0" + (PATCHES / name).read_bytes() + b"\0")
    return h.hexdigest()


def init_queue(git_dir, work_tree, sdist):
    """Unpack upstream into work_tree and commit it as the queue's base."""
    for t in TREES:
        shutil.rmtree(work_tree / t, ignore_errors=True)
    unpack(sdist, work_tree)
    git("init", "-q", "-b", "queue", git_dir=git_dir, work_tree=work_tree)
    (git_dir / "info").mkdir(exist_ok=True)
    (git_dir / "info" / "exclude").write_text(EXCLUDE)
    env = {"GIT_AUTHOR_DATE": BASE_DATE, "GIT_COMMITTER_DATE": BASE_DATE}
    git(*ADD, git_dir=git_dir, work_tree=work_tree)
    msg = f"upstream: {UPSTREAM} (sdist sha256 {SDIST_SHA256})"
    git("commit", "-q", "-m", msg, git_dir=git_dir, work_tree=work_tree, env=env)
    git("tag", "-f", BASE_TAG, git_dir=git_dir, work_tree=work_tree)


def am(patch, git_dir, work_tree):
    try:
        git("am", "-q", "--keep-cr", str(patch), git_dir=git_dir, work_tree=work_tree)
    except QueueError as e:
        git("am", "--abort", git_dir=git_dir, work_tree=work_tree, check=False)
        raise QueueError(f"{patch.name} does not apply: {e}") from None


def tree_diff(a, b):
    """Files of mlx_lm/ and tests/ that differ between two trees."""
    out = []
    for t in TREES:
        p = subprocess.run(
            ["diff", "-rq", "-x", "__pycache__", "-x", ".pytest_cache", t, str(b / t)],
            cwd=a, capture_output=True, text=True,
        )
        out += [l.replace(str(b) + "/", "") for l in p.stdout.splitlines()]
    return out


def tree_hash(git_dir=QGIT, work_tree=ROOT):
    """Hash of mlx_lm/ and tests/ as they are on disk (tracked or not)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git("read-tree", "HEAD", git_dir=git_dir, work_tree=work_tree, env=env)
        git(*ADD, git_dir=git_dir, work_tree=work_tree, env=env)
        return git("write-tree", git_dir=git_dir, work_tree=work_tree, env=env)


def unexported_files():
    """Files of the tree that differ from the queue's HEAD (new ones too)."""
    return git("diff", "--name-status", "HEAD", tree_hash())


def load_state():
    try:
        return json.loads(STATE.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save_state():
    state = {"patches": patches_digest(), "tree": git("rev-parse", "HEAD^{tree}")}
    STATE.write_text(json.dumps(state, indent=1) + "\n")


def materialize(force=False):
    if QGIT.exists() and not PRISTINE.exists():
        unpack(fetch_sdist(), PRISTINE, members=("mlx_lm",))
    if QGIT.exists():
        state = load_state()
        if state.get("patches") == patches_digest():
            return
        edited = []
        if "tree" in state:
            edited = git("diff", "--name-only", state["tree"], tree_hash())
            edited = edited.splitlines()
        elif any((ROOT / t).exists() for t in TREES):
            edited = ["(unknown: the queue state is missing)"]
        if edited and not force:
            listing = "\n  ".join(edited)
            raise QueueError(
                "patches/ changed, but these files have edits that are not in "
                f"patches/ and would be lost:\n  {listing}\n"
                "Export them first (commit to the queue, `make patches`), or "
                "throw them away with `make materialize FORCE=1`."
            )
        log("patches/ changed: rebuilding the tree")
        shutil.rmtree(QUEUE)
    elif any((ROOT / t).exists() for t in TREES) and not force:
        raise QueueError(
            "mlx_lm/ or tests/ exist but no patch queue does (.queue/git); "
            "move them away or run `make materialize FORCE=1` to replace them"
        )
    QUEUE.mkdir(exist_ok=True)
    init_queue(QGIT, ROOT, fetch_sdist())
    # A pristine copy: tests compare with files upstream's code writes
    shutil.rmtree(PRISTINE, ignore_errors=True)
    unpack(fetch_sdist(), PRISTINE, members=("mlx_lm",))
    for name in series():
        am(PATCHES / name, QGIT, ROOT)
    save_state()
    log(f"materialized upstream + {len(series())} patches")


def export():
    if not QGIT.exists():
        raise QueueError("no patch queue: run `make materialize` first")
    dirty = unexported_files()
    if dirty:
        raise QueueError(
            "the tree has edits not committed to the queue:\n"
            + dirty
            + "\ncommit them with `tools/qgit commit` (a --fixup onto the "
            "patch they belong to, then `tools/qgit rebase -i --autosquash "
            "upstream`), then `make patches`"
        )
    with tempfile.TemporaryDirectory() as tmp:
        git(
            "-c", "core.abbrev=12", "-c", "diff.renames=true",
            "format-patch", "--zero-commit", "--no-signature", "--no-numbered",
            "--no-thread", "--no-cover-letter", "--no-binary",
            "-o", tmp, f"{BASE_TAG}..HEAD",
        )
        new = sorted(p.name for p in Path(tmp).glob("*.patch"))
        PATCHES.mkdir(exist_ok=True)
        for stale in PATCHES.glob("*.patch"):
            if stale.name not in new:
                stale.unlink()
        for name in new:
            data = (Path(tmp) / name).read_bytes()
            dest = PATCHES / name
            if not dest.exists() or dest.read_bytes() != data:
                dest.write_bytes(data)
    text = "".join(n + "\n" for n in new)
    if not (PATCHES / "series").exists() or (PATCHES / "series").read_text() != text:
        (PATCHES / "series").write_text(text)
    save_state()
    log(f"exported {len(new)} patches")


def test_env(root):
    """Environment for running the tree's tests offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    blas = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
    if os.path.exists(blas) and blas not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = " ".join(filter(None, [blas, env.get("LD_PRELOAD")]))
    return env


def added_tests(git_dir, work_tree):
    names = git(
        "diff", "--name-only", "--diff-filter=AM", "HEAD~1", "HEAD", "--",
        "tests/test_*.py", git_dir=git_dir, work_tree=work_tree,
    )
    return names.split()


def check(keep=False, pytest_args=()):
    names = series()
    tmp = Path(tempfile.mkdtemp(prefix="kvq-check-"))
    failures = []
    try:
        git_dir = tmp / ".git"
        init_queue(git_dir, tmp, fetch_sdist())
        for i, name in enumerate(names, 1):
            try:
                am(PATCHES / name, git_dir, tmp)
            except QueueError as e:
                failures.append(str(e))
                break
            tests = added_tests(git_dir, tmp)
            label = f"[{i}/{len(names)}] {name}"
            if not tests:
                log(f"{label}: applies, adds no tests")
                continue
            cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
            p = subprocess.run(cmd + list(pytest_args) + tests, cwd=tmp, env=test_env(tmp))
            if p.returncode != 0:
                failures.append(f"{label}: its tests fail ({' '.join(tests)})")
                break
            log(f"{label}: applies, {' '.join(tests)} pass")
        if not failures and QGIT.exists():
            diff = tree_diff(tmp, ROOT)
            if diff:
                failures.append(
                    "the working tree differs from upstream + patches/ "
                    "(unexported edits):\n  " + "\n  ".join(diff)
                )
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        raise QueueError("\n".join(failures))
    log(f"all {len(names)} patches apply in order and their tests pass")


def build(dest):
    """Write upstream + patches into dest/mlx_lm (no queue needed)."""
    dest = Path(dest).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        init_queue(tmp / ".git", tmp, fetch_sdist())
        for name in series():
            am(PATCHES / name, tmp / ".git", tmp)
        shutil.rmtree(dest / "mlx_lm", ignore_errors=True)
        shutil.copytree(tmp / "mlx_lm", dest / "mlx_lm")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("materialize")
    p.add_argument("--force", action="store_true")
    sub.add_parser("export")
    p = sub.add_parser("check")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p = sub.add_parser("build")
    p.add_argument("dest")
    p = sub.add_parser("git")
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    try:
        if args.cmd == "materialize":
            materialize(args.force)
        elif args.cmd == "export":
            export()
        elif args.cmd == "check":
            check(args.keep)
        elif args.cmd == "build":
            build(args.dest)
        elif args.cmd == "git":
            extra = args.args
            # The repo's .gitignore hides mlx_lm/ and tests/ from this git
            # too: adding named files needs -f (never for "add -A" or ".").
            if extra[:1] == ["add"] and not {"-A", "--all", ".", "-u"} & set(extra):
                extra = ["add", "-f", *extra[1:]]
            p = subprocess.run(
                ["git", f"--git-dir={QGIT}", f"--work-tree={ROOT}", *extra],
                cwd=ROOT, env={**os.environ, **GIT_ENV},
            )
            return p.returncode
    except QueueError as e:
        print(f"patchq {args.cmd}: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"patchq {args.cmd}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
