"""Run a script of cases in a subprocess and collect the JSON line each prints.

Sharded cases need devices that exist only when `XLA_FLAGS` is set before JAX
starts, so they run in their own process (the script adds the device count to
the `XLA_FLAGS` it inherits); each test asserts on its case's line.

- `serve(cases)`: a case script's entry point, `python SCRIPT [NAME ...]
  [--skip NAME ...]`.
- `SCRIPTS`: each script, the test file reading it and its breadth cases
  (their tests are marked `thorough`): the fast suite skips them, `--thorough`
  runs only them.
- `start(config)`: at the start of a test run (conftest.py, before
  pytest-xdist starts its workers) every script whose test file is selected
  starts in the background, so no worker waits idle for one; `results(name,
  config)` waits for its file; `stop` cleans up at the end. Without `start`
  (the tests run some other way), `results` runs the script itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Collection

import pytest


def serve(cases: dict[str, Callable[[], dict]]) -> None:
    """Run the cases named on the command line (all by default, less any
    `--skip`) and print one JSON line each: the case's dict, its seconds, or
    what it raised."""
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", help="cases to run (default: all)")
    parser.add_argument("--skip", nargs="*", default=[], help="cases not to run")
    args = parser.parse_args()
    unknown = (set(args.names) | set(args.skip)) - set(cases)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {sorted(cases)}")
    for name in args.names or [n for n in cases if n not in args.skip]:
        start = time.perf_counter()
        try:
            result = cases[name]()
        except Exception as error:  # noqa: BLE001 - reported to the test
            result = {
                "raised": type(error).__name__,
                "message": str(error),
                "trace": traceback.format_exc()[-2000:],
            }
        seconds = round(time.perf_counter() - start, 2)
        result.pop("hlo", None)
        print(json.dumps({"case": name, "seconds": seconds, **result}), flush=True)


@dataclasses.dataclass(frozen=True)
class CaseScript:
    """A script of cases, the test file asserting on them, its breadth cases."""

    script: pathlib.Path
    test_file: pathlib.Path
    breadth: frozenset[str]


HERE = pathlib.Path(__file__).resolve().parent
MODES = ("constant", "edge", "reflect", "symmetric", "wrap")  # boundary modes
NN_LAYERS = (
    "conv1d",
    "conv2d",
    "conv2d_stride",
    "conv2d_circular_groups",
    "conv3d",
    "maxpool",
    "maxpool_aligned",
    "avgpool",
    "avgpool1d",
    "blur",
    "finite_difference",
)
# The nn batch cases the fast suite runs: each kind of layer on Explicit axes
# (a grouped convolution too: XLA gathers a batch-sharded one, so it keeps the
# slices), a convolution and a pool on Auto axes (every layer is spatially
# sharded in both suites).
NN_BATCHED_FAST = {
    "explicit": {
        "conv2d",
        "conv2d_circular_groups",
        "maxpool",
        "avgpool",
        "blur",
        "finite_difference",
    },
    "auto": {"conv2d", "maxpool"},
}
SCRIPTS = {
    # The fast suite gives the 5-point Laplacian every boundary mode and the
    # 9-point one the zero fill (its corners); its deep halos are periodic.
    "sharded": CaseScript(
        HERE / "sharded" / "cases.py",
        HERE / "test_sharding.py",
        frozenset(
            [*(f"lap9_{mode}" for mode in MODES[1:])]
            + ["deep_halo_constant", "deep_halo_reflect"]
        ),
    ),
    "nn_sharded": CaseScript(
        HERE / "nn_sharded" / "cases.py",
        HERE / "test_nn_sharding.py",
        frozenset(
            f"batch_{axis_type}_{layer}"
            for axis_type, fast in NN_BATCHED_FAST.items()
            for layer in NN_LAYERS
            if layer not in fast
        ),
    ),
}
_FOLDER = "EQX_STENCIL_CASE_RESULTS"  # environment variable: where they go
TIMEOUT = 900  # seconds for one script


def _args(case_script: CaseScript, config: pytest.Config) -> list[str]:
    if config.getoption("thorough"):
        return sorted(case_script.breadth)
    return ["--skip", *sorted(case_script.breadth)]


def _selected(test_file: pathlib.Path, config: pytest.Config) -> bool:
    """Whether the command line's paths include `test_file`."""
    testpaths = [str(config.rootpath / path) for path in config.getini("testpaths")]
    for arg in config.args or testpaths:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if test_file == path or path in test_file.parents:
            return True
    return False


def start(config: pytest.Config) -> list[subprocess.Popen]:
    """Start every selected script now, each writing its results to a file
    (atomically, when done) in a fresh folder named by `_FOLDER`."""
    selected = {
        name: case_script
        for name, case_script in SCRIPTS.items()
        if _selected(case_script.test_file, config)
    }
    if not selected:
        return []
    folder = pathlib.Path(tempfile.mkdtemp(prefix="eqx-stencil-cases-"))
    os.environ[_FOLDER] = str(folder)  # the xdist workers inherit it
    started = []
    for name, case_script in selected.items():
        command = [sys.executable, __file__, str(case_script.script)]
        command += [str(folder / f"{name}.json"), *_args(case_script, config)]
        started.append(subprocess.Popen(command))
    return started


def stop(started: list[subprocess.Popen]) -> None:
    """At the end of a run: stop the scripts still running (a run stopped
    early), remove their results."""
    for process in started:
        process.kill()
    folder = os.environ.pop(_FOLDER, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def results(name: str, config: pytest.Config) -> dict[str, dict]:
    """The results of script `name` for this test run."""
    case_script = SCRIPTS[name]
    folder = os.environ.get(_FOLDER)
    if folder is None:
        return run_cases(case_script.script, *_args(case_script, config))
    path = pathlib.Path(folder) / f"{name}.json"
    deadline = time.monotonic() + TIMEOUT
    while not path.is_file():
        assert time.monotonic() < deadline, f"{case_script.script} gave no results"
        time.sleep(0.2)
    found = json.loads(path.read_text())
    assert "__failed__" not in found, found.get("__failed__")
    return found


def run_cases(script: pathlib.Path, *args: str) -> dict[str, dict]:
    """Every case's result from `script` (given `args`), run on the CPU."""
    done = subprocess.run(
        [sys.executable, str(script), *args],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    found = {entry["case"]: entry for entry in map(json.loads, lines)}
    assert found, f"the cases printed nothing:\n{done.stderr[-3000:]}"
    return found


def result(results: dict[str, dict], name: str) -> dict:
    """Case `name`'s result; it must not have raised."""
    entry = results[name]
    assert "raised" not in entry, entry.get("trace", entry)
    return entry


def breadth_param(name: str, breadth: Collection[str]) -> object:
    """`name` as a parameter, marked `thorough` if it is a breadth case."""
    marks = [pytest.mark.thorough] if name in breadth else []
    return pytest.param(name, marks=marks, id=name)


if __name__ == "__main__":  # python case_runner.py SCRIPT OUT [ARGS ...], by start
    script, out, *rest = sys.argv[1:]
    try:
        found = run_cases(pathlib.Path(script), *rest)
    except Exception as error:  # noqa: BLE001 - reported to the tests
        found = {"__failed__": f"{script}: {type(error).__name__}: {error}"}
    pathlib.Path(f"{out}.part").write_text(json.dumps(found))
    os.replace(f"{out}.part", out)  # complete or absent
