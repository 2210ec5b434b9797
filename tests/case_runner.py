"""Run a script of cases in a subprocess and collect the JSON line each prints.

Sharded cases need devices that exist only when `XLA_FLAGS` is set before JAX
starts, so they run in their own process (the script adds the device count to
the `XLA_FLAGS` it inherits); each test asserts on its case's line.

- `serve(cases)`: a case script's entry point, `python SCRIPT [NAME ...]
  [--skip NAME ...]`.
- `shared_results(...)`: a test module's results, computed once per test run:
  under pytest-xdist the first worker that asks runs the script, the others
  read its file. The fast suite skips the module's `breadth` cases (their
  tests are marked `thorough`); `--thorough` runs only those.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Collection

import pytest
from filelock import FileLock


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


def run_cases(script: pathlib.Path, *args: str) -> dict[str, dict]:
    """Every case's result from `script` (given `args`), run on the CPU."""
    done = subprocess.run(
        [sys.executable, str(script), *args],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    found = {entry["case"]: entry for entry in map(json.loads, lines)}
    assert found, f"the cases printed nothing:\n{done.stderr[-3000:]}"
    return found


def shared_results(
    script: pathlib.Path,
    breadth: Collection[str],
    config: pytest.Config,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, dict]:
    """`script`'s results for this test run, computed once across xdist
    workers: the cases not in `breadth`, or with `--thorough` only those."""
    args = ["--skip", *breadth]
    if config.getoption("thorough"):
        args = list(breadth)
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return run_cases(script, *args)
    # The workers' temporary folders share this run's parent folder.
    root = tmp_path_factory.getbasetemp().parent
    path = root / f"{script.parent.name}-{script.stem}.json"
    with FileLock(f"{path}.lock"):
        if not path.is_file():
            path.write_text(json.dumps(run_cases(script, *args)))
        return json.loads(path.read_text())


def result(results: dict[str, dict], name: str) -> dict:
    """Case `name`'s result; it must not have raised."""
    entry = results[name]
    assert "raised" not in entry, entry.get("trace", entry)
    return entry


def breadth_param(name: str, breadth: Collection[str]) -> object:
    """`name` as a parameter, marked `thorough` if it is a breadth case."""
    marks = [pytest.mark.thorough] if name in breadth else []
    return pytest.param(name, marks=marks, id=name)
