#!/usr/bin/env python3
"""The patch queue: pristine upstream mlx-lm + patches/ = the fork's tree.

    materialize   unpack the pinned upstream sdist into mlx_lm/ and tests/,
                  commit it as the base of the queue git (.queue/git), then
                  `git am` every patch of patches/series. Idempotent.
    export        write the queue (upstream..HEAD) to patches/ (deterministic)
    check         fresh temp dir: apply the series patch by patch with plain
                  `git am`, run the tests each patch adds or changes, the
                  whole offline suite at the end of the upstream track, and
                  compare the result with the working tree
    git ARGS      run git on the queue (the tree's own history)
    build DIR     write a patched mlx_lm/ into DIR (used by setup.py)

The repository's own git never tracks mlx_lm/ or tests/; the queue git never
tracks anything else.

The series has two tracks. patches/series lists the upstream track (PRs for
upstream mlx-lm, in merge order), then a line `# fork track`, then the fork
track. In the queue git, the branch `upstream-track` points at the last
commit of the upstream track (at `upstream` when it is empty);
`rebase.updateRefs` and a post-rewrite hook keep it there through
`tools/qgit rebase -i` and `commit --amend`. `export` splits the series
where that branch points and refuses if it is missing or not in HEAD's
history. `# pr: <topic>` lines (tools/prs.py) stay before their patch.
"""

import argparse
import hashlib
import json
import re
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from email import message_from_bytes
from email.policy import default as email_policy
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
TRACK_REF = "upstream-track"  # queue branch: the last upstream-track commit
TRACK_LINE = "# fork track"  # series: upstream track above, fork track below
PR_LINE = "# pr:"  # series: groups upstream-track patches into PRs (prs.py)

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


def read_series(check=True):
    """patches/series as (names, n_upstream, pr_lines).

    names: every patch in order; n_upstream: how many of them form the
    upstream track (all of them if there is no `# fork track` line);
    pr_lines: {patch name: the `# pr:` lines right before it}.
    """
    path = PATCHES / "series"
    names, n_up, pr_lines, pending = [], None, {}, []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if line == TRACK_LINE:
            if n_up is not None:
                raise QueueError(f"patches/series has two '{TRACK_LINE}' lines")
            n_up, pending = len(names), []
        elif line.startswith(PR_LINE):
            pending.append(line)
        elif line and not line.startswith("#"):
            if check and not (PATCHES / line).is_file():
                raise QueueError(f"patches/series names {line}, which does not exist")
            if pending:
                pr_lines[line], pending = pending, []
            names.append(line)
    return names, len(names) if n_up is None else n_up, pr_lines


def series():
    return read_series()[0]


def patches_digest(tracks=True):
    names, n_up, _ = read_series()
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + (PATCHES / name).read_bytes() + b"\0")
    if tracks:  # queues made before the tracks existed hashed without this
        h.update(f"upstream track: {n_up}\0".encode())
    return h.hexdigest()


def patch_mail(path):
    """(subject, message, diff) of a format-patch file."""
    data = Path(path).read_bytes()
    headers, _, body = data.partition(b"\n\n")
    subject = str(message_from_bytes(headers + b"\n\n", policy=email_policy)["Subject"])
    subject = subject.split("] ", 1)[1] if subject.startswith("[PATCH") else subject
    lines = body.decode("utf-8").split("\n")
    end = lines.index("---") if "---" in lines else len(lines)
    starts = [i for i, l in enumerate(lines) if l.startswith("diff --git ")]
    diff = "\n".join(lines[starts[0] :]) if starts else ""
    return " ".join(subject.split()), "\n".join(lines[:end]).strip("\n"), diff


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
    keep_track_ref(git_dir, work_tree)


# `commit --amend` of the upstream track's last commit moves the branch too.
# Not inside a rebase: its fixups amend too, and it moves the branch itself.
POST_REWRITE = f"""#!/bin/sh
# mlx-lm-kvq (tools/patchq.py): keep {TRACK_REF} on its commit through
# `commit --amend` (a rebase moves it itself: rebase.updateRefs)
[ "$1" = amend ] || exit 0
for d in rebase-merge rebase-apply; do
  [ -d "$(git rev-parse --git-path $d)" ] && exit 0
done
read old new rest
[ "$(git rev-parse -q --verify refs/heads/{TRACK_REF})" = "$old" ] &&
  git update-ref refs/heads/{TRACK_REF} "$new" "$old"
exit 0
"""


def keep_track_ref(git_dir, work_tree=ROOT):
    """Make rebases and amends move the upstream-track branch with its commit."""
    git("config", "rebase.updateRefs", "true", git_dir=git_dir, work_tree=work_tree)
    hook = git_dir / "hooks" / "post-rewrite"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(POST_REWRITE)
    hook.chmod(0o755)


def apply_series(git_dir, work_tree, upstream_only=False):
    """`git am` the series onto a fresh queue; mark the upstream track's end."""
    names, n_up, _ = read_series()
    for name in names[:n_up]:
        am(PATCHES / name, git_dir, work_tree)
    git("branch", "-f", TRACK_REF, git_dir=git_dir, work_tree=work_tree)
    if upstream_only:
        return n_up
    for name in names[n_up:]:
        am(PATCHES / name, git_dir, work_tree)
    return len(names)


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
        if state.get("patches") == patches_digest(tracks=False) and adopt_track():
            state["patches"] = patches_digest()  # keep "tree": unexported work
            STATE.write_text(json.dumps(state, indent=1) + "\n")
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
    n = apply_series(QGIT, ROOT)
    save_state()
    log(f"materialized upstream + {n} patches")


def adopt_track():
    """Mark the upstream track in a queue made before the tracks existed.

    Only when the queue's commits are still one per patch of the series
    (same count, same subject where the upstream track ends); the tree and
    any unexported work stay as they are."""
    names, n_up, _ = read_series()
    commits = git("rev-list", "--reverse", f"{BASE_TAG}..HEAD").split()
    if len(commits) != len(names) or has_ref(TRACK_REF):
        return False
    end = commits[n_up - 1] if n_up else BASE_TAG
    subject = patch_mail(PATCHES / names[n_up - 1])[0] if n_up else ""
    if n_up and git("log", "-1", "--format=%s", end) != subject:
        return False
    keep_track_ref(QGIT)
    git("branch", TRACK_REF, end)
    log(f"marked the upstream track's end ({n_up} patches): branch {TRACK_REF}")
    return True


def has_ref(name):
    return bool(git("rev-parse", "-q", "--verify", f"refs/heads/{name}", check=False))


def upstream_track_length():
    """Commits from upstream to the upstream-track branch, or QueueError."""
    fix = (
        f"\nPoint it at the last commit of the upstream track:\n"
        f"  tools/qgit branch -f {TRACK_REF} <commit>   "
        f"(`{BASE_TAG}` if the upstream track is empty)"
    )
    if not has_ref(TRACK_REF):
        names, n_up, _ = read_series(check=False)
        hint = marker_hint(patch_mail(PATCHES / names[n_up - 1])[0]) if n_up else ""
        raise QueueError(
            f"the queue has no branch {TRACK_REF}, which marks where the "
            "upstream track ends, so the series cannot be split into tracks."
            + fix + hint
        )
    for a, b in ((BASE_TAG, TRACK_REF), (TRACK_REF, "HEAD")):
        if git("rev-list", "--count", f"{b}..{a}") != "0":
            subject = git("log", "-1", "--format=%s", TRACK_REF)
            raise QueueError(
                f"branch {TRACK_REF} (\"{subject}\") is not in {BASE_TAG}..HEAD: "
                "it was left behind when its commit was rewritten (e.g. by "
                "`commit --amend` at the top of the queue, or a rebase without "
                "rebase.updateRefs)." + fix + marker_hint(subject)
            )
    return int(git("rev-list", "--count", f"{BASE_TAG}..{TRACK_REF}"))


def marker_hint(subject):
    """A command moving the branch to the queue commit with this subject."""
    for line in git("log", "--format=%h %s", f"{BASE_TAG}..HEAD").splitlines():
        commit, s = line.split(" ", 1)
        if s == subject:
            return (
                f"\nIts commit is probably {commit} \"{s}\":\n"
                f"  tools/qgit branch -f {TRACK_REF} {commit}"
            )
    return ""


def render_series(names, n_up, pr_lines):
    """patches/series text; `# pr:` lines stay with their patch (by subject)."""
    by_topic = {}
    for name, lines in pr_lines.items():
        by_topic[name.split("-", 1)[-1]] = lines
    out = []
    for i, name in enumerate(names):
        if i == n_up:
            out.append(TRACK_LINE)
        out += by_topic.pop(name.split("-", 1)[-1], [])
        out.append(name)
    if n_up == len(names):
        out.append(TRACK_LINE)
    for topic, lines in sorted(by_topic.items()):
        log(f"dropped from series ({topic} is gone): {'; '.join(lines)}")
    return "".join(line + "\n" for line in out)


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
    n_up = upstream_track_length()
    pr_lines = read_series(check=False)[2]
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
    text = render_series(new, n_up, pr_lines)
    if not (PATCHES / "series").exists() or (PATCHES / "series").read_text() != text:
        (PATCHES / "series").write_text(text)
    save_state()
    log(f"exported {len(new)} patches: {n_up} upstream track, {len(new) - n_up} fork track")


# How `make test` runs the suite (tools/run: hub off, stand-in hub, models).
PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
PYTEST += ["-p", "pytest_offline", "--timeout=600"]


def run_tests(tree, tests, log_dir, name, extra=()):
    """Run pytest on tests in tree, offline; return (passed, pytest's counts)."""
    out = log_dir / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT / 'tools'}"}
    cmd = [str(ROOT / "tools" / "run"), *PYTEST, *extra, *tests]
    with open(out, "w") as f:
        p = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT)
    text = out.read_text()
    # pytest's last line: "2 failed, 446 passed, 33 skipped, ... in 86.35s (0:01:26)"
    counts = re.findall(r"^=*\s*(\d+ \w.*?) in [\d.]+s\b", text, re.MULTILINE)
    summary = counts[-1] if counts else "no summary"
    if p.returncode != 0:
        summary += f" (pytest exit {p.returncode})"
        sys.stderr.write(text)
    return p.returncode == 0, summary


def added_tests(git_dir, work_tree):
    names = git(
        "diff", "--name-only", "--diff-filter=AM", "HEAD~1", "HEAD", "--",
        "tests/test_*.py", git_dir=git_dir, work_tree=work_tree,
    )
    return names.split()


def check(keep=False):
    """Apply the series patch by patch in a fresh temp dir and test it."""
    names, n_up, _ = read_series()
    tmp = Path(tempfile.mkdtemp(prefix="kvq-check-"))
    logs = tmp / ".check"
    logs.mkdir()
    failures, rows = [], []  # rows: (number, name, applies, tests, seconds)
    started, applied = time.monotonic(), 0
    try:
        git_dir = tmp / ".git"
        init_queue(git_dir, tmp, fetch_sdist())
        for i, name in enumerate(names, 1):
            t0 = time.monotonic()
            label = f"[{i}/{len(names)}] {name}"
            try:
                am(PATCHES / name, git_dir, tmp)
            except QueueError as e:
                failures.append(str(e))
                rows.append((i, name, "NO", "-", time.monotonic() - t0))
                break
            applied = i
            tests = added_tests(git_dir, tmp)
            result = "adds no tests"
            if tests:
                log(f"{label}: applies; running {' '.join(tests)}")
                ok, result = run_tests(tmp, tests, logs, f"{i:04d}", ["-x"])
                if not ok:
                    failures.append(f"{label}: its tests fail ({' '.join(tests)})")
            log(f"{label}: {result}")
            rows.append((i, name, "yes", result, time.monotonic() - t0))
            if i == n_up:
                git("branch", "-f", TRACK_REF, git_dir=git_dir, work_tree=tmp)
                t0 = time.monotonic()
                log(f"end of the upstream track ({n_up} patches): the whole offline suite")
                ok, result = run_tests(tmp, ["tests"], logs, "upstream-track")
                if not ok:
                    failures.append("upstream track: the offline suite fails")
                log(f"upstream track, whole offline suite: {result}")
                suite = "upstream track: whole offline suite"
                rows.append(("", suite, "", result, time.monotonic() - t0))
        if applied == len(names) and QGIT.exists():
            diff = tree_diff(tmp, ROOT)
            if diff:
                failures.append(
                    "the working tree differs from upstream + patches/ "
                    "(unexported edits):\n  " + "\n  ".join(diff)
                )
    finally:
        if keep:
            log(f"kept {tmp} (pytest logs in {logs})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    width = max([len(r[1]) for r in rows] + [10])
    print(f"\n{'':>3}  {'patch':<{width}}  applies   time  tests")
    for number, name, applies, result, seconds in rows:
        print(f"{number:>3}  {name:<{width}}  {applies:<7}  {seconds:4.0f}s  {result}")
        if number == "":
            print(f"{'':>3}  {TRACK_LINE}{' (empty)' if n_up == len(names) else ''}")
    print(f"total {time.monotonic() - started:.0f}s")
    if failures:
        raise QueueError("\n".join(failures))
    print(
        f"all {len(names)} patches ({n_up} upstream track, {len(names) - n_up} "
        "fork track) apply in order, their tests pass, and the whole offline "
        "suite passes at the end of the upstream track"
        if n_up else f"all {len(names)} patches apply in order and their tests pass"
    )


def build(dest):
    """Write upstream + patches into dest/mlx_lm (no queue needed)."""
    dest = Path(dest).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        init_queue(tmp / ".git", tmp, fetch_sdist())
        apply_series(tmp / ".git", tmp)
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
