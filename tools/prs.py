#!/usr/bin/env python3
"""Upstream pull requests from the upstream track of patches/series.

One PR per upstream-track patch, in merge order, unless the series groups
patches: a line `# pr: <topic>` starts a PR holding the patches below it, up
to the next `# pr:` line or `# fork track`; a bare `# pr:` line ends a group
(each patch below it is a PR of its own again). For PR number NN it writes

    build/prs/NN-<topic>.mbox   its patches, as `git am` takes them
    build/prs/NN-<topic>.md     its cover letter

and docs/upstream-prs.md, the table of all PRs. It reads patches/ only, so
the same patches give byte-identical files.
"""

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import patchq  # noqa: E402

OUT = patchq.ROOT / "build" / "prs"
DOC = patchq.ROOT / "docs" / "upstream-prs.md"
GITHUB = "https://github.com/ml-explore/mlx-lm"
BASE = "v0.32.2"

# "issue 191", "issues 1043 and 1583", "PR 968", "PRs 1, 2 and 3"
REFS = re.compile(
    r"\b(issues?|PRs?|pull requests?)\s+(#?\d+(?:(?:\s*,\s*(?:and\s+)?|\s+and\s+)#?\d+)*)",
    re.IGNORECASE,
)
TEST_DEF = re.compile(r"\s*(async\s+)?def test_\w*\s*\(")
HUNK = re.compile(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


# "#1573" (an issue or a PR of mlx-lm; GitHub links issues/N to either),
# not "ml-explore/mlx#3026" (another repository)
HASH_REF = re.compile(r"(?<![\w/])#(\d+)\b")


def references(message):
    """Upstream (kind, number) pairs named in a commit message, sorted."""
    found = set()
    for m in REFS.finditer(message):
        kind = "issue" if m[1].lower().startswith("issue") else "PR"
        found |= {(kind, int(n)) for n in re.findall(r"\d+", m[2])}
    numbers = {n for _, n in found}
    found |= {("#", int(n)) for n in HASH_REF.findall(message) if int(n) not in numbers}
    return sorted(found, key=lambda r: ({"issue": 0, "#": 1}.get(r[0], 2), r[1]))


def ref_link(kind, number):
    if kind == "#":
        return f"[#{number}]({GITHUB}/issues/{number})"
    path = "issues" if kind == "issue" else "pull"
    return f"[{kind} {number}]({GITHUB}/{path}/{number})"


def kind_of(path):
    if path.startswith("tests/"):
        return "tests"
    return "code" if path.endswith(".py") else "docs"


def diff_files(diff):
    """{path: stats} of a git diff: lines added and removed, `def test_`
    lines added and removed, and whether the file is new or deleted."""
    files, old, new, stats = {}, 0, 0, None
    for line in diff.split("\n"):
        if old > 0 or new > 0:  # inside a hunk
            if line.startswith("+"):
                new -= 1
                stats["added"] += 1
                stats["tests_added"] += bool(TEST_DEF.match(line[1:]))
            elif line.startswith("-"):
                old -= 1
                stats["removed"] += 1
                stats["tests_removed"] += bool(TEST_DEF.match(line[1:]))
            elif not line.startswith("\\"):
                old, new = old - 1, new - 1
        elif line.startswith("diff --git "):
            path = line.rsplit(" b/", 1)[1]
            stats = files.setdefault(
                path,
                dict.fromkeys(("added", "removed", "tests_added", "tests_removed"), 0),
            )
            stats["status"] = "changed"
        elif line.startswith("new file mode"):
            stats["status"] = "new"
        elif line.startswith("deleted file mode"):
            stats["status"] = "deleted"
        elif m := HUNK.match(line):
            old = int(m[1]) if m[1] is not None else 1
            new = int(m[2]) if m[2] is not None else 1
    return files


def slug(text):
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-.")


def collect():
    """The PRs of the upstream track, in merge order."""
    names, n_up, pr_lines = patchq.read_series()
    groups, group = [], None
    for name in names[:n_up]:
        if name in pr_lines:
            topic = pr_lines[name][-1][len(patchq.PR_LINE) :].strip()
            group = {"topic": topic, "patches": []} if topic else None
            if group:
                groups.append(group)
        if group:
            group["patches"].append(name)
        else:
            groups.append({"topic": "", "patches": [name]})
    prs = []
    for number, g in enumerate(groups, 1):
        commits, files = [], {}
        for name in g["patches"]:
            subject, message, diff = patchq.patch_mail(patchq.PATCHES / name)
            commits.append((name, subject, message))
            for path, s in diff_files(diff).items():
                if path in files:  # a later patch of the group: add it up
                    for k in ("added", "removed", "tests_added", "tests_removed"):
                        files[path][k] += s[k]
                    if s["status"] == "deleted" or files[path]["status"] != "new":
                        files[path]["status"] = s["status"]
                else:
                    files[path] = s
        topic = g["topic"] or commits[0][1]
        stem = slug(g["topic"]) if g["topic"] else g["patches"][0].split("-", 1)[1]
        stem = f"{number:02d}-{slug(stem.removesuffix('.patch'))}"
        text = "\n\n".join(m for _, _, m in commits)
        prs.append(
            {
                "number": number,
                "title": topic,
                "stem": stem,
                "commits": commits,
                "files": dict(sorted(files.items())),
                "refs": references("\n\n".join(s + "\n" + m for _, s, m in commits)),
                "try": [p for p in text.split("\n\n") if p.lstrip().startswith("Try:")],
            }
        )
    return prs


def totals(pr, kind):
    """(files, added, removed) of one kind of file."""
    fs = [s for p, s in pr["files"].items() if kind_of(p) == kind]
    return len(fs), sum(s["added"] for s in fs), sum(s["removed"] for s in fs)


def test_files(pr):
    return [
        p
        for p, s in pr["files"].items()
        if re.fullmatch(r"tests/(.*/)?test_[^/]*\.py", p) and s["status"] != "deleted"
    ]


def n_tests(pr):
    return sum(
        s["tests_added"] for p, s in pr["files"].items() if kind_of(p) == "tests"
    )


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def cover_letter(pr, count):
    n = pr["number"]
    lines = [f"# {pr['title']}", ""]
    after = (
        "nothing else" if n == 1 else ("PR 01" if n == 2 else f"PRs 01 to {n - 1:02d}")
    )
    lines += [
        f"PR {n:02d} of {count} of the mlx-lm-kvq upstream track: "
        f"`git am {pr['stem']}.mbox` onto mlx-lm {BASE}, after {after} "
        "(merge order; see docs/upstream-prs.md).",
        "",
        "Patches: " + ", ".join(f"`patches/{name}`" for name, _, _ in pr["commits"]),
        "",
        "## Upstream issues and PRs it answers",
        "",
    ]
    lines += [f"- {ref_link(*r)}" for r in pr["refs"]] or ["None named."]
    lines += [
        "",
        "## Size",
        "",
        "| | files | added | removed |",
        "|---|---:|---:|---:|",
    ]
    for kind, label in (
        ("code", "code (.py)"),
        ("docs", "docs and other"),
        ("tests", "tests"),
    ):
        f, a, r = totals(pr, kind)
        if f:
            lines.append(f"| {label} | {f} | +{a} | -{r} |")
    lines.append(
        f"| total | {len(pr['files'])} | "
        f"+{sum(s['added'] for s in pr['files'].values())} | "
        f"-{sum(s['removed'] for s in pr['files'].values())} |"
    )
    lines += [""] + [
        f"- `{p}` ({s['status']}): +{s['added']} -{s['removed']}"
        for p, s in pr["files"].items()
    ]
    lines += ["", "## Tests", ""]
    tests = [(p, s) for p, s in pr["files"].items() if kind_of(p) == "tests"]
    for p, s in tests:
        what = (
            f"{plural(s['tests_added'], 'test method')} added"
            if s["tests_added"]
            else "no test methods"
        )
        if s["tests_removed"]:
            what += f", {s['tests_removed']} removed or renamed"
        if not re.search(r"(^|/)test_[^/]*\.py$", p):
            what = "test support, " + what
        lines.append(f"- `{p}` ({s['status']}): {what}")
    if not tests:
        lines.append("None.")
    lines += ["", "## What a reviewer should try", ""]
    if pr["try"]:
        lines += ["\n\n".join(pr["try"])]
    elif test_files(pr):
        lines += ["```", "python -m pytest " + " ".join(test_files(pr)), "```"]
    else:
        lines += ["No tests to run; read the diff."]
    if len(pr["commits"]) == 1:
        lines += ["", "## Commit message", "", pr["commits"][0][2]]
    else:
        lines += ["", "## Commit messages"]
        for _, subject, message in pr["commits"]:
            lines += ["", f"### {subject}", "", message]
    return "\n".join(lines).rstrip("\n") + "\n"


def table(prs):
    def size(prs, kind):
        f, a, r = (sum(t) for t in zip((0, 0, 0), *(totals(pr, kind) for pr in prs)))
        return f"+{a} -{r}" if f else ""

    lines = [
        "# Upstream PRs",
        "",
        "Generated by `make prs` (tools/prs.py) from the upstream track of",
        "`patches/series`; do not edit. Each row is one pull request for",
        f"[ml-explore/mlx-lm]({GITHUB}), in merge order: each",
        f"applies on {BASE} after the rows above it. For PR NN, `make prs`",
        "writes `build/prs/NN-<topic>.mbox` (its patches) and",
        "`build/prs/NN-<topic>.md` (its cover letter: links, size, tests, what",
        "to try, commit message).",
        "",
        "To send PR NN:",
        "",
        "```",
        f"git clone {GITHUB} && cd mlx-lm",
        f"git checkout -b kvq-NN {BASE}",
        "git am /path/to/mlx-lm-kvq/build/prs/NN-*.mbox   # after 01 .. NN-1",
        "git rebase main        # resolve against upstream's main",
        "pre-commit run --all-files && python -m pytest <the PR's tests>",
        "```",
        "",
        "While earlier PRs are not merged yet, apply their mboxes first",
        "(`git am` 01 .. NN in order) and open a stacked PR; the cover letter",
        "is the PR description.",
        "",
        "Lines are added and removed lines of the diff: code is `.py` outside",
        "`tests/`, docs is any other file outside `tests/`. Tests counts the",
        "`def test_` methods the PR adds.",
        "",
        "| # | PR | code | docs | tests | test methods | answers |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for pr in prs:
        refs = ", ".join(ref_link(*r) for r in pr["refs"])
        title = pr["title"].replace("|", "\\|")
        lines.append(
            f"| {pr['number']:02d} | {title} | "
            f"{size([pr], 'code')} | {size([pr], 'docs')} | {size([pr], 'tests')} | "
            f"{n_tests(pr)} | {refs} |"
        )
    lines.append(
        f"| | total, {len(prs)} PRs | {size(prs, 'code')} | {size(prs, 'docs')} | "
        f"{size(prs, 'tests')} | {sum(n_tests(pr) for pr in prs)} | |"
    )
    return "\n".join(lines) + "\n"


def write(path, data):
    """Write only if different (keeps mtimes of unchanged files)."""
    data = data.encode() if isinstance(data, str) else data
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT}")
    args = parser.parse_args()
    try:
        prs = collect()
    except patchq.QueueError as e:
        print(f"prs: {e}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for pr in prs:
        mbox = b"".join(
            (patchq.PATCHES / name).read_bytes() for name, _, _ in pr["commits"]
        )
        write(args.out / f"{pr['stem']}.mbox", mbox)
        write(args.out / f"{pr['stem']}.md", cover_letter(pr, len(prs)))
        wanted |= {f"{pr['stem']}.mbox", f"{pr['stem']}.md"}
    for stale in args.out.iterdir():
        if (
            re.fullmatch(r"\d{2,}-.*\.(mbox|md)", stale.name)
            and stale.name not in wanted
        ):
            stale.unlink()
    write(DOC, table(prs))
    print(
        f"prs: {len(prs)} PRs in {args.out}, table in {DOC.relative_to(patchq.ROOT)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
