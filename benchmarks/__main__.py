"""`python -m benchmarks [--quick] [--case NAME ...] [--plot PATH] [--report PATH]`:
print the tables. Each case runs in a fresh process (`--in-process`: all in this
one). `--report docs/benchmark-results.md` also writes the printed report there:
the performance page includes that file, so every figure the docs quote comes
from one run."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

from . import (
    compile_time,
    conv,
    data_regions,
    first_call,
    heat,
    laplacian,
    memory,
    nn,
    patches,
    pooling,
    scan,
    sharding,
    solver,
)
from ._plot import plot
from ._report import Table, from_json, machine, markdown, missed, to_json
from ._runtime import RuntimeCase, optional_kernex, run_case
from ._timing import FULL, QUICK, Budget


Case = Callable[[Budget], Table | tuple[Table, ...]]  # one table or several


def runtime(make: Callable[[], RuntimeCase]) -> Case:
    """A case runner for a run-time case built when it runs."""
    return lambda budget: run_case(make(), budget)


CASES: dict[str, Case] = {
    "laplacian": runtime(laplacian.zero_boundary_case),
    "laplacian-wrap": runtime(laplacian.wrap_case),
    "conv": runtime(lambda: conv.case(3, 1024)),
    "conv16": runtime(lambda: conv.case(16, 512)),
    "conv64": runtime(lambda: conv.case(64, 512)),
    "conv64-256": runtime(lambda: conv.case(64, 256)),
    # The rule's thresholds (`_conv_lowering`), each from both sides. Outputs
    # (the contraction, then the convolution) and the contraction's planes
    # (180 MiB, then 216 MiB; `MAX_PLANES_BYTES`): judged. Channels
    # (slices, then the contraction): forward and value-and-gradients shown,
    # the rule weighing both. Taps times outputs (slices, then the
    # convolution): a bound on the slices' compile time, run times shown.
    "conv-channels-below": runtime(
        lambda: conv.threshold_case(3, 3, 1, 1024, bar=False)
    ),
    "conv-channels-above": runtime(
        lambda: conv.threshold_case(4, 3, 1, 1024, bar=False)
    ),
    "conv-channels-below-grad": runtime(
        lambda: conv.threshold_case(3, 3, 1, 1024, gradient=True, bar=False)
    ),
    "conv-channels-above-grad": runtime(
        lambda: conv.threshold_case(4, 3, 1, 1024, gradient=True, bar=False)
    ),
    "conv-outputs-below": runtime(lambda: conv.threshold_case(16, 3, 7, 256)),
    "conv-outputs-above": runtime(lambda: conv.threshold_case(16, 3, 8, 256)),
    "conv-planes-below": runtime(lambda: conv.threshold_case(16, 3, 5, 1024)),
    "conv-planes-above": runtime(lambda: conv.threshold_case(16, 3, 6, 1024)),
    "conv-taps-below": runtime(lambda: conv.threshold_case(1, 3, 15, 256, bar=False)),
    "conv-taps-above": runtime(lambda: conv.threshold_case(1, 3, 16, 256, bar=False)),
    "maxpool": runtime(pooling.case),
    "patches": runtime(patches.case),
    "heat": runtime(heat.case),
    "heat-grad": heat.run_grad,
    "data-regions": data_regions.run,
    "solver-grad": solver.run,
    "linear-convection": runtime(scan.convection_case),
    "linear-convection-vmap": runtime(scan.ensemble_case),
    "gauss-seidel": runtime(scan.gauss_seidel_case),
    "compile": compile_time.run,
    "first-call": first_call.run,
    "memory": memory.run,
    "nn-conv": runtime(lambda: nn.conv_case(16, 16, 64)),
    "nn-conv128": runtime(lambda: nn.conv_case(16, 16, 128)),
    "nn-conv64ch": runtime(lambda: nn.conv_case(64, 64, 64)),
    "nn-conv-grad": runtime(lambda: nn.conv_grad_case(16, 16, 64)),
    "nn-maxpool": runtime(lambda: nn.maxpool_case(16, 128)),
    "nn-avgpool": runtime(lambda: nn.avgpool_case(16, 128)),
    "nn-blur": runtime(lambda: nn.depthwise_case("blur", 16, 128)),
    "nn-finite-difference": runtime(lambda: nn.depthwise_case("fd", 16, 128)),
    "sharding": sharding.run,
}
# Environment a case needs before JAX starts (its own process sets it).
CASE_ENV: dict[str, dict[str, str]] = {"sharding": sharding.ENV}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="few rounds: a smoke run, not numbers"
    )
    parser.add_argument(
        "--case",
        action="append",
        choices=list(CASES),
        help="run only this case (repeatable); default: all",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every case in this process (default: each in a fresh one)",
    )
    parser.add_argument("--tables-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--report",
        type=Path,
        help="also write the printed report (markdown) to this path",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        help="also draw eqx_stencil's ratios as a bar chart (PNG) at this path",
    )
    return parser.parse_args(argv)


def merge(tables: Sequence[Table]) -> list[Table]:
    """Tables with the same headers joined, in order of first appearance."""
    merged: dict[tuple[str, ...], Table] = {}
    for table in tables:
        rows = merged[table.headers].rows if table.headers in merged else ()
        merged[table.headers] = Table(table.headers, rows + table.rows)
    return list(merged.values())


def run_here(name: str, budget: Budget) -> list[Table]:
    """Case `name` in this process."""
    result = CASES[name](budget)
    return [result] if isinstance(result, Table) else list(result)


def run_isolated(name: str, quick: bool) -> list[Table]:
    """Case `name` in a fresh process, so that no case inherits another's heap
    (after the big cases, later ones ran up to 2.7x slower in one process)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tables.json"
        command = [sys.executable, "-m", "benchmarks", "--in-process", "--case", name]
        command += ["--tables-json", str(path)] + (["--quick"] if quick else [])
        env = {**os.environ, **CASE_ENV.get(name, {})}
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        return from_json(json.loads(path.read_text()))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chosen cases and print their tables and the bars missed."""
    options = parse(argv)
    budget = QUICK if options.quick else FULL
    if options.tables_json is not None:  # a child of run_isolated
        tables = [table for name in options.case for table in run_here(name, budget)]
        options.tables_json.write_text(json.dumps(to_json(tables)))
        return
    kernex = "not installed" if optional_kernex() is None else version("kernex")
    report: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        report.append(text)

    emit("## Benchmark results\n")
    emit(f"- machine: {machine()}")
    emit(f"- eqx_stencil {version('eqx_stencil')}, kernex {kernex}")
    emit(f"- mode: {'quick (smoke run)' if options.quick else 'full'}\n")
    start = time.perf_counter()
    tables = []
    names = options.case or list(CASES)
    for number, name in enumerate(names, start=1):
        print(f"[{number}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        case_start = time.perf_counter()
        if options.in_process:
            tables += run_here(name, budget)
        else:
            tables += run_isolated(name, options.quick)
        seconds = time.perf_counter() - case_start
        print(f"[{number}/{len(names)}] {name}: {seconds:.1f} s", file=sys.stderr)
    for table in merge(tables):
        emit(markdown(table) + "\n")
    lines = missed(tables)
    emit("### Bars and targets missed\n")
    emit("\n".join(lines) if lines else "none")
    if options.report is not None:
        options.report.write_text("\n".join(report) + "\n")
        print(f"report: {options.report}", file=sys.stderr)
    if options.plot is not None:
        plot(tables, options.plot)
        print(f"plot: {options.plot}", file=sys.stderr)
    print(f"total: {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
