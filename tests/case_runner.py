"""Run a script of cases in a subprocess and collect the JSON line each prints.

Sharded cases need devices that exist only when `XLA_FLAGS` is set before JAX
starts, so they run in their own process (the script adds the device count to
the `XLA_FLAGS` it inherits); each test asserts on its case's line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys


def run_cases(script: pathlib.Path) -> dict[str, dict]:
    """Every case's result from `script`, run on the CPU."""
    done = subprocess.run(
        [sys.executable, str(script)],
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


def result(results: dict[str, dict], name: str) -> dict:
    """Case `name`'s result; it must not have raised."""
    entry = results[name]
    assert "raised" not in entry, entry.get("trace", entry)
    return entry
