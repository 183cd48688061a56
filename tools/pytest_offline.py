"""pytest plugin: skip the upstream tests that cannot run offline here.

Load it with ``-p pytest_offline`` and ``tools/`` on ``PYTHONPATH``. It
reads ``offline-deselect.txt`` next to this file (or the file named by
``--offline-list`` / ``$MLX_LM_OFFLINE_LIST``) and marks every listed test
as skipped with the reason from the list, so a run reports them as skipped
instead of dropping them silently. The upstream ``tests/`` directory stays
untouched.

List format, one entry a line, ``#`` starts a comment line::

    NODE ID | WHEN | REASON

NODE ID is a pytest node id relative to the directory holding ``tests/``
(``tests/test_x.py::TestX::test_y``); ``*`` and ``?`` match as in fnmatch.
A bare file (``tests/test_x.py``) skips the whole module without importing
it, so a module whose imports fail is reported as skipped, not as a
collection error. WHEN says when the entry applies:

* ``always``: on every machine (the test needs the network or the real
  checkpoint);
* ``no-metal``: only when ``mlx.core.metal.is_available()`` is false;
* ``missing:MOD[,MOD]``: only when one of the modules cannot be imported.

At the end, entries whose file was collected but that matched no test are
reported, so the list follows upstream renames.
"""

import fnmatch
import importlib.util
import os
from pathlib import Path

import pytest

DEFAULT_LIST = Path(__file__).resolve().parent / "offline-deselect.txt"
ENV_LIST = "MLX_LM_OFFLINE_LIST"


class Entry:
    """One line of the list."""

    def __init__(self, pattern, when, reason, lineno):
        self.pattern = pattern
        self.when = when
        self.reason = reason
        self.lineno = lineno
        self.file = pattern.split("::", 1)[0]
        self.is_module = "::" not in pattern
        self.hits = 0

    def matches(self, nodeid):
        """True if nodeid (or a parametrized/sub id of it) is listed."""
        base = nodeid.split("[", 1)[0]
        return any(
            fnmatch.fnmatchcase(n, p)
            for n in (nodeid, base)
            for p in (self.pattern, "*/" + self.pattern)
        )

    def matches_file(self, relpath):
        """True if a collected file is this entry's file."""
        return fnmatch.fnmatchcase(relpath, self.file) or fnmatch.fnmatchcase(
            relpath, "*/" + self.file
        )


def parse_list(path):
    """Parse the list file into entries; raise ValueError on a bad line."""
    entries = []
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|", 2)]
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{path}:{lineno}: expected 'NODE ID | WHEN | REASON'")
        pattern, when, reason = parts
        if not (
            when in ("always", "no-metal")
            or (when.startswith("missing:") and len(when) > len("missing:"))
        ):
            raise ValueError(f"{path}:{lineno}: unknown WHEN {when!r}")
        entries.append(Entry(pattern, when, reason, lineno))
    return entries


def metal_available():
    """True if mlx has a Metal device (False if mlx cannot be imported)."""
    try:
        import mlx.core as mx

        return bool(mx.metal.is_available())
    except Exception:
        return False


def applies(entry):
    """Whether the entry's WHEN condition holds on this machine."""
    if entry.when == "always":
        return True
    if entry.when == "no-metal":
        return not metal_available()
    modules = entry.when[len("missing:") :].split(",")
    return any(importlib.util.find_spec(m.strip()) is None for m in modules)


def skip_reason(entry):
    """The message shown for a skipped test."""
    return f"offline list ({entry.when}): {entry.reason}"


class SkippedModule(pytest.Module):
    """A test module that is reported as skipped without being imported."""

    reason = ""

    def collect(self):
        raise pytest.skip.Exception(self.reason, allow_module_level=True)


class OfflinePlugin:
    """Holds the parsed list for one session."""

    def __init__(self, path, entries):
        self.path = path
        self.entries = entries
        self.active = [e for e in entries if applies(e)]
        self.seen_files = set()

    def rel(self, config, path):
        """path relative to the rootdir, with forward slashes."""
        try:
            return Path(path).relative_to(config.rootpath).as_posix()
        except ValueError:
            return Path(path).as_posix()

    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makemodule(self, module_path, parent):
        relpath = self.rel(parent.config, module_path)
        for entry in self.active:
            if entry.is_module and entry.matches_file(relpath):
                entry.hits += 1
                module = SkippedModule.from_parent(parent, path=module_path)
                module.reason = skip_reason(entry)
                return module
        return None

    @pytest.hookimpl(tryfirst=True)
    def pytest_make_collect_report(self, collector):
        if not isinstance(collector, SkippedModule):
            return None
        # Report the skip at the test file, not at this plugin.
        longrepr = (str(collector.path), None, f"Skipped: {collector.reason}")
        return pytest.CollectReport(collector.nodeid, "skipped", longrepr, [])

    def pytest_collection_modifyitems(self, config, items):
        collected = {self.rel(config, item.path) for item in items}
        self.seen_files.update(
            e.file for e in self.entries if any(e.matches_file(f) for f in collected)
        )
        for item in items:
            for entry in self.active:
                if not entry.is_module and entry.matches(item.nodeid):
                    entry.hits += 1
                    item.add_marker(pytest.mark.skip(reason=skip_reason(entry)))
                    break

    def pytest_report_header(self, config):
        return (
            f"offline list: {self.path} ({len(self.active)} of "
            f"{len(self.entries)} entries apply here)"
        )

    def pytest_terminal_summary(self, terminalreporter):
        stale = [
            e
            for e in self.active
            if e.hits == 0 and not e.is_module and e.file in self.seen_files
        ]
        if stale:
            terminalreporter.write_sep("=", "offline list entries that match no test")
            for e in stale:
                terminalreporter.write_line(f"{self.path}:{e.lineno}: {e.pattern}")


def pytest_addoption(parser):
    group = parser.getgroup("offline")
    group.addoption(
        "--offline-list",
        default=None,
        help=f"list of tests to skip offline (default: ${ENV_LIST} or "
        f"{DEFAULT_LIST.name} next to this plugin)",
    )


def pytest_configure(config):
    path = config.getoption("offline_list") or os.environ.get(ENV_LIST) or DEFAULT_LIST
    path = Path(path).expanduser()
    if not path.is_file():
        raise pytest.UsageError(f"pytest_offline: no list file at {path}")
    try:
        entries = parse_list(path)
    except ValueError as e:
        raise pytest.UsageError(f"pytest_offline: {e}") from e
    config.pluginmanager.register(OfflinePlugin(path, entries), "pytest_offline_list")
