"""Test-run settings shared by every test file.

- `--examples-scale=F`: every hypothesis test draws `F` times its own
  `max_examples` (at least `MIN_EXAMPLES`). `nox -s tests` draws a quarter
  (the fast suite), `nox -s tests_thorough` the declared number.
- `--thorough`: only the hypothesis tests and the tests marked `thorough` run
  (the `tests_thorough` session; CI runs it too). A test or parameter marked
  `thorough` adds breadth to a rule the fast suite already checks with a
  cheaper case (more modes, layers, meshes or sizes); the fast suite skips it.
- The sharded case scripts (`case_runner.py`) start in the background when
  the run starts, before pytest-xdist starts its workers.
- Progress: one line per test file as it finishes (passed count and seconds)
  instead of a dot per test; failures, errors and skips still print their
  letter, and the summary at the end is pytest's own.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import hypothesis
import pytest
from case_runner import start, stop


MIN_EXAMPLES = 5


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--examples-scale",
        type=float,
        default=1.0,
        help="scale every hypothesis test's max_examples by this factor",
    )
    parser.addoption(
        "--thorough",
        action="store_true",
        help="run only the hypothesis tests and the tests marked thorough",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    scale = config.getoption("examples_scale")
    thorough = config.getoption("thorough")
    kept, dropped, scaled = [], [], set()
    for item in items:
        test = getattr(item, "obj", None)
        hypothesis_test = getattr(test, "is_hypothesis_test", False)
        breadth = item.get_closest_marker("thorough") is not None
        keep = (hypothesis_test or breadth) if thorough else not breadth
        (kept if keep else dropped).append(item)
        if not (keep and hypothesis_test):
            continue
        if scale != 1 and id(test) not in scaled:
            scaled.add(id(test))
            # The settings hypothesis reads when the test runs (an explicit
            # `@settings(max_examples=...)` wins over any profile).
            current = test._hypothesis_internal_use_settings
            examples = max(MIN_EXAMPLES, round(current.max_examples * scale))
            test._hypothesis_internal_use_settings = hypothesis.settings(
                current, max_examples=examples
            )
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


class FileProgress:
    """Prints `[done/total files] path: N passed (S s)` as each file finishes."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.totals: collections.Counter[str] = collections.Counter()
        self.seen: collections.Counter[str] = collections.Counter()
        self.passed: collections.Counter[str] = collections.Counter()
        self.seconds: collections.Counter[str] = collections.Counter()
        self.files_done = 0
        self.start = time.perf_counter()

    def count(self, nodeids: list[str]) -> None:
        if not self.totals:
            self.totals.update(nodeid.split("::")[0] for nodeid in nodeids)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.count([item.nodeid for item in session.items])

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: Any) -> Any:
        if report.when == "call" and report.passed:
            return "passed", "", "PASSED"  # no dot: the file's line says it
        return None

    def pytest_runtest_logreport(self, report: Any) -> None:
        path = report.nodeid.split("::")[0]
        self.seconds[path] += report.duration
        if report.when == "call" and report.passed:
            self.passed[path] += 1
        if report.when != "teardown":
            return
        self.seen[path] += 1
        if self.seen[path] == self.totals.get(path):
            self.files_done += 1
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                elapsed = time.perf_counter() - self.start
                reporter.ensure_newline()
                reporter.write_line(
                    f"[{self.files_done:2}/{len(self.totals)} files, "
                    f"{elapsed:4.0f} s] {path}: {self.passed[path]} passed "
                    f"({self.seconds[path]:.1f} s of test time)"
                )


class XdistCollection:
    """Under pytest-xdist the controller learns the tests from the workers."""

    def __init__(self, progress: FileProgress) -> None:
        self.progress = progress

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list) -> None:
        self.progress.count(ids)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or config.option.verbose > 0:
        return  # an xdist worker reports to the controller; -v lists each test
    progress = FileProgress(config)
    config.pluginmanager.register(progress, "eqx-stencil-file-progress")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistCollection(progress), "eqx-stencil-xdist")


@pytest.fixture
def unroll_applied(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Spies on the unrolled window lowering (`_lower.unroll`): one entry per
    call, whether it applied (`False`: it left the function to `vmap`)."""
    from eqx_stencil import _lower

    applied: list[bool] = []
    unroll = _lower.unroll

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = unroll(*args, **kwargs)
        applied.append(out is not None)
        return out

    monkeypatch.setattr(_lower, "unroll", spy)
    return applied


_STARTED: list = []


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist starts the workers
def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        _STARTED.extend(start(session.config))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        stop(_STARTED)
