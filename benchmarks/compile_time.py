"""Trace + compile time of the Laplacian, against the hand-written one.

Every sample lowers and compiles a fresh function object (and a fresh
stencil), so no cache keyed on the function helps. Input shapes are abstract:
nothing of size N is allocated.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._report import TIMING_HEADERS, Bar, Row, Table, ms, timing_row
from ._runtime import ES, HAND
from ._timing import Budget, one_offs
from .laplacian import Fn, es_laplacian, hand_laplacian


SIZES = (256, 1024, 4096)
VS_HAND = Bar(ES, HAND, limit=2.0)
# "Flat in N": the ratio to hand at N over the ratio at the smallest N. Hand's
# compile time does not depend on N, and a ratio of interleaved samples is
# robust to the machine's load drifting between sizes.
FLAT = Bar(ES, f"its N={SIZES[0]} ratio", limit=1.5)


def compile_seconds(make: Callable[[], Fn], n: int) -> float:
    """Seconds to trace, lower and compile a fresh function for an n×n input."""
    spec = jax.ShapeDtypeStruct((n, n), jnp.float32)
    fn = make()
    start = time.perf_counter()
    jax.jit(fn).lower(spec).compile()
    return time.perf_counter() - start


def _measures(n: int) -> dict[str, Callable[[], float]]:
    """The compile-time measurement of each variant at size n."""
    makers = {ES: es_laplacian, HAND: hand_laplacian}
    return {
        name: lambda make=make: compile_seconds(make, n)
        for name, make in makers.items()
    }


def run(budget: Budget) -> Table:
    """Median compile times at every size, with the bars on `eqx_stencil`."""
    for measure in _measures(8).values():  # one-off costs out of the way
        measure()
    rows: list[Row] = []
    first_ratio = None
    for n in SIZES:
        measures = _measures(n)
        samples = one_offs(measures, dict.fromkeys(measures, budget.repeats))
        es_s, hand_s = (statistics.median(samples[name]) for name in (ES, HAND))
        ratio = es_s / hand_s
        first_ratio = ratio if first_ratio is None else first_ratio
        verdicts = [VS_HAND.judge(ratio)]
        if n != SIZES[0]:
            verdicts.append(FLAT.judge(ratio / first_ratio))
        case = f"compile Laplacian {n}²"
        rows.append(timing_row(case, ES, ms(es_s), ratio, None, verdicts))
        rows.append(timing_row(case, HAND, ms(hand_s), None, None))
    return Table(TIMING_HEADERS, tuple(rows))
