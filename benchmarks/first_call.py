"""First call (trace + compile + run) of the 4096² Laplacian, against kernex.

Each sample jits a fresh function object. kernex gets one sample: its first
call takes seconds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import jax

from ._report import TIMING_HEADERS, Bar, Table, ms, timing_row
from ._runtime import ES, HAND, KERNEX, optional_kernex
from ._timing import Budget, one_offs, time_call
from .laplacian import Fn, es_laplacian, field, hand_laplacian, kernex_laplacian


N = 4096
VS_KERNEX = Bar(ES, KERNEX, limit=None)  # no bar: the ratio is shown


def _makers() -> dict[str, Callable[[], Fn]]:
    """Fresh-function factories of the variants (kernex when installed)."""
    makers: dict[str, Callable[[], Fn]] = {ES: es_laplacian, HAND: hand_laplacian}
    if optional_kernex() is not None:
        makers[KERNEX] = kernex_laplacian
    return makers


def run(budget: Budget) -> Table:
    """Median first-call time of each variant."""
    makers = _makers()
    small = field(8)
    for make in makers.values():  # one-off costs out of the way
        time_call(jax.jit(make()), (small,))
    x = field(N)
    measures = {
        name: lambda make=make: time_call(jax.jit(make()), (x,))
        for name, make in makers.items()
    }
    repeats = {name: 1 if name == KERNEX else budget.repeats for name in makers}
    medians = {
        name: statistics.median(s) for name, s in one_offs(measures, repeats).items()
    }
    case = f"first call Laplacian {N}²"
    rows = []
    for name, seconds in medians.items():
        to_hand = None if name == HAND else seconds / medians[HAND]
        verdicts = []
        if name == ES and KERNEX in medians:
            verdicts.append(VS_KERNEX.judge(seconds / medians[KERNEX]))
        rows.append(timing_row(case, name, ms(seconds), to_hand, None, verdicts))
    return Table(TIMING_HEADERS, tuple(rows))
