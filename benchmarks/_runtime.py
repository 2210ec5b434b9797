"""Run-time cases: variants of one computation, checked, then timed together."""

from __future__ import annotations

import importlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import numpy as np

from ._report import (
    TIMING_HEADERS,
    Bar,
    Row,
    Table,
    Traffic,
    Verdict,
    ms,
    throughput_table,
    timing_row,
)
from ._timing import Budget, interleaved, single_call, warm_up


HAND = "hand"
LAX = "lax"
ES = "eqx_stencil"
KERNEX = "kernex"
ROOT = Path(__file__).resolve().parents[1]


class Omitted(Exception):
    """A variant left out of its case; the message is its row's text."""


def optional_kernex() -> ModuleType | None:
    """kernex when `import kernex` works, else `None`."""
    try:
        import kernex
    except ImportError:
        return None
    return kernex


def identity(out: Any) -> Any:
    """The output unchanged."""
    return out


@dataclass(frozen=True)
class Variant:
    """One implementation of a case's computation.

    - `fn`: called with the case's arguments; it is `jax.jit`ted.
    - `layout`: maps the output to the layout of the others, for the check only.
    - `checked`: whether its output must agree with the others (`False` for a
      reference that computes something else, like an elementwise copy).
    - `tolerance`: absolute and relative tolerance of that check.
    - `skip`: a reason not to run it at all (too slow or too big).
    - `fragile`: a wrong output, or an error while warming up, shows in its row
      (`wrong result`, `failed`) and drops it from the timing instead of
      stopping the suite (kernex's function mesh mutates its table when
      called, so a later trace may compute something else or raise).
    - `once`: compiled ahead of time and called once, that call being both
      its checked output and its only sample (shown `(n=1)`): for a variant
      so slow that warming up and timing it in rounds would take minutes.
    - `limit_s`: with `once`, the call runs in a child process (the case
      rebuilt from its `factory`), killed after `limit_s` seconds of import,
      compile and call: over it, the row reads `omitted: ...` and the case
      goes on. The output must be one array.
    """

    name: str
    fn: Callable[..., Any]
    layout: Callable[[Any], Any] = identity
    checked: bool = True
    tolerance: float = 1e-5
    skip: str | None = None
    fragile: bool = False
    once: bool = False
    limit_s: float | None = None


@dataclass(frozen=True)
class RuntimeCase:
    """A computation, its variants, and the bars on their time ratios.

    `factory`: `module:function` and the JSON arguments that rebuild this
    case in a child process (needed by a variant with `limit_s`).
    `traffic`: for a memory-bound case, the bytes it moves per call (its
    variants' effective memory throughput is tabulated against its copy's).
    """

    name: str
    make_args: Callable[[], tuple[Any, ...]]
    variants: Sequence[Variant]
    bars: Sequence[Bar] = ()
    factory: tuple[str, tuple[Any, ...]] | None = None
    traffic: Traffic | None = None


def child_once(factory: str, arguments: str, name: str, path: str) -> None:
    """In a fresh process: build the case, call variant `name` once.

    Its output is saved to `path`; the call's seconds are printed as JSON.
    """
    module, function = factory.split(":")
    case = getattr(importlib.import_module(module), function)(*json.loads(arguments))
    (variant,) = [v for v in case.variants if v.name == name]
    out, seconds = single_call(variant.fn, case.make_args())
    np.save(path, np.asarray(out))
    print(json.dumps({"seconds": seconds}))


def call_in_child(case: RuntimeCase, name: str, limit_s: float) -> tuple[Any, float]:
    """`single_call` of variant `name` in a child process killed after `limit_s`.

    Raises `Omitted` when the limit is reached, `RuntimeError` when it fails.
    """
    if case.factory is None:
        raise ValueError(f"{case.name}: {name} has `limit_s` but the case no factory")
    factory, arguments = case.factory
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "out.npy")
        call = ", ".join(map(repr, (factory, json.dumps(arguments), name, path)))
        code = f"from benchmarks._runtime import child_once as c; c({call})"
        try:
            done = subprocess.run(
                [sys.executable, "-c", code],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=limit_s,
            )
        except subprocess.TimeoutExpired:
            raise Omitted(f"omitted: compile + call over {limit_s:g} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"{case.name}: {name} failed in a child: {last}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        return np.load(path), report["seconds"]


def measure(
    case: RuntimeCase,
    variant: Variant,
    call: Callable[..., Any],
    args: tuple[Any, ...],
    budget: Budget,
) -> tuple[Any, float]:
    """A variant's output and the time of its last warm (or only) call."""
    if not variant.once:
        return warm_up(call, args, budget)
    if variant.limit_s is None:
        return single_call(call, args)
    return call_in_child(case, variant.name, variant.limit_s)


def check_outputs(case: RuntimeCase, outputs: dict[str, Any]) -> dict[str, str]:
    """Assert that every checked variant agrees with the first checked one.

    A fragile variant that disagrees is not an error: it is returned, with the
    reason to show in its row, in place of its timing.
    """
    checked = [v for v in case.variants if v.checked and v.name in outputs]
    expected = np.asarray(checked[0].layout(outputs[checked[0].name]))
    wrong = {}
    for variant in checked[1:]:
        actual = np.asarray(variant.layout(outputs[variant.name]))
        try:
            np.testing.assert_allclose(
                actual,
                expected,
                rtol=variant.tolerance,
                atol=variant.tolerance,
                err_msg=f"{case.name}: {variant.name} disagrees with {checked[0].name}",
            )
        except AssertionError:
            if not variant.fragile:
                raise
            wrong[variant.name] = _wrong_result(actual, expected)
    return wrong


def _wrong_result(actual: np.ndarray, expected: np.ndarray) -> str:
    """The row text of an output that disagrees with the reference."""
    if actual.shape != expected.shape:
        return f"wrong result: shape {actual.shape}, not {expected.shape}"
    error = np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0)
    return f"wrong result: max abs error {error:.3g}"


def _median_cell(samples: list[float], rounds: int) -> str:
    """The median, with the sample count when it is short of `rounds`."""
    cell = ms(statistics.median(samples))
    return cell if len(samples) == rounds else f"{cell} (n={len(samples)})"


def program(call: Any, args: tuple[Any, ...]) -> list[str]:
    """The instructions of `call`'s compiled program, without names,
    metadata or order: equal for programs that differ only in those."""
    text = call.lower(*args).compile().as_text()
    text = re.sub(r", metadata=\{[^}]*\}", "", text)
    found = re.findall(r"^\s*(?:ROOT )?%\S+ = (.*)$", text, flags=re.M)
    return sorted(re.sub(r"%[\w.\-]+", "%", line) for line in found)


def _same_programs(
    case: RuntimeCase, calls: dict[str, Any], args: tuple[Any, ...]
) -> dict[tuple[str, str], bool]:
    """For each bar with `same_program` whose variants both run: whether
    they compile to the same program."""
    return {
        (bar.variant, bar.reference): program(calls[bar.variant], args)
        == program(calls[bar.reference], args)
        for bar in case.bars
        if bar.same_program and bar.variant in calls and bar.reference in calls
    }


def _rows(
    case: RuntimeCase,
    samples: dict[str, list[float]],
    failed: dict[str, str],
    same: dict[tuple[str, str], bool],
) -> tuple[Row, ...]:
    """Medians, ratios to `hand`/`lax` and verdicts, one row per variant.

    `failed`: the row text of variants omitted, or fragile ones that failed
    or were wrong; `same`: `_same_programs`.
    """
    medians = {name: statistics.median(s) for name, s in samples.items()}
    rounds = max(len(s) for s in samples.values())

    def to(name: str, reference: str) -> float | None:
        if reference not in medians or name == reference:
            return None
        return medians[name] / medians[reference]

    rows = []
    for variant in case.variants:
        name = variant.name
        if variant.skip is not None:
            rows.append(
                timing_row(case.name, name, f"skipped: {variant.skip}", None, None)
            )
            continue
        if name in failed:
            rows.append(timing_row(case.name, name, failed[name], None, None))
            continue
        verdicts = [
            bar.judge(
                medians[name] / medians[bar.reference],
                same.get((name, bar.reference)),
            )
            if bar.reference in medians
            else Verdict(f"{bar.reference} not run", None, None)
            for bar in case.bars
            if bar.variant == name
        ]
        median = _median_cell(samples[name], rounds)
        rows.append(
            timing_row(case.name, name, median, to(name, HAND), to(name, LAX), verdicts)
        )
    return tuple(rows)


def run_case(case: RuntimeCase, budget: Budget) -> Table | tuple[Table, Table]:
    """Warm up and check every variant, time them interleaved, tabulate: the
    timing table, and with `case.traffic` also the throughput table.

    A `once` variant's single call is its sample; it is not timed in rounds.
    """
    args = case.make_args()
    variants = {v.name: v for v in case.variants if v.skip is None}
    calls = {name: jax.jit(v.fn) for name, v in variants.items()}
    outputs, per_call_s, failed = {}, {}, {}
    for name, call in calls.items():
        try:
            outputs[name], per_call_s[name] = measure(
                case, variants[name], call, args, budget
            )
        except Omitted as error:
            failed[name] = str(error)
        except Exception as error:
            if not variants[name].fragile:
                raise
            failed[name] = f"failed: {type(error).__name__}"
    failed |= check_outputs(case, outputs)
    del outputs
    for name in failed:
        del calls[name]
        per_call_s.pop(name, None)
    once = {name: [per_call_s.pop(name)] for name in calls if variants[name].once}
    calls = {name: call for name, call in calls.items() if name not in once}
    same = _same_programs(case, calls, args)
    samples = interleaved(calls, args, per_call_s, budget) | once
    timing = Table(TIMING_HEADERS, _rows(case, samples, failed, same))
    if case.traffic is None:
        return timing
    medians = {name: statistics.median(s) for name, s in samples.items()}
    return timing, throughput_table(case.name, case.traffic, medians)
