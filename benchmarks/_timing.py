"""Interleaved timing: each round runs every variant once, in a random order;
rounds repeat.

Interleaving spreads slow drifts of the machine (frequency scaling, other
processes) evenly over the variants, so their ratio stays meaningful even when
absolute times wander; the random order spreads what one variant leaves
behind for the next (evicted caches after a variant that touches hundreds of
megabytes).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax


SLOW_CALL_S = 5.0  # a variant whose warm call takes longer is not run in rounds
CAPPED_CALL_S = 0.25  # a variant slower than this joins only the first rounds


@dataclass(frozen=True)
class Budget:
    """How long to measure.

    - `target_s`: seconds of timed rounds per case (fast variants).
    - `min_rounds`, `max_rounds`: bounds on the number of rounds.
    - `cap`: rounds a slow variant (warm call over `CAPPED_CALL_S`) joins.
    - `warm_runs`: warm calls after the compiling one.
    - `repeats`: samples of one-off measurements (compile, first call).
    """

    target_s: float
    min_rounds: int
    max_rounds: int
    cap: int
    warm_runs: int
    repeats: int


FULL = Budget(
    target_s=3.0, min_rounds=10, max_rounds=400, cap=3, warm_runs=3, repeats=7
)
QUICK = Budget(target_s=0.3, min_rounds=3, max_rounds=20, cap=1, warm_runs=1, repeats=1)


def time_call(fn: Callable[..., Any], args: tuple[Any, ...]) -> float:
    """Seconds `fn(*args)` takes, waiting for its result."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def warm_up(
    fn: Callable[..., Any], args: tuple[Any, ...], budget: Budget
) -> tuple[Any, float]:
    """Compile and run `fn`; return its output and the time of its last warm call.

    A slow function gets one warm call only.
    """
    out = jax.block_until_ready(fn(*args))
    seconds = time_call(fn, args)
    for _ in range(budget.warm_runs - 1):
        if seconds > CAPPED_CALL_S:
            break
        seconds = time_call(fn, args)
    return out, seconds


def single_call(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, float]:
    """Compile `fn` ahead of time, then call it once: its output and that call's time.

    For a variant too slow to call twice (`warm_up` calls a function at least
    twice): the one call is both its output for the check and its only sample.
    """
    compiled = jax.jit(fn).lower(*args).compile()
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, time.perf_counter() - start


def rounds_for(per_call_s: Mapping[str, float], budget: Budget) -> int:
    """Rounds so that the fast variants fill about `budget.target_s`."""
    fast = [s for s in per_call_s.values() if s <= CAPPED_CALL_S]
    round_s = max(sum(fast), 1e-6)
    wanted = math.ceil(budget.target_s / round_s)
    return min(max(wanted, budget.min_rounds), budget.max_rounds)


def interleaved(
    calls: Mapping[str, Callable[..., Any]],
    args: tuple[Any, ...],
    per_call_s: Mapping[str, float],
    budget: Budget,
) -> dict[str, list[float]]:
    """Samples (seconds) of each call, timed round-robin.

    `per_call_s` are the warm-up times: a variant over `SLOW_CALL_S` keeps that
    single sample and is not run again; one over `CAPPED_CALL_S` runs in the
    first `budget.cap` rounds only. Each round runs the variants in a fresh
    (seeded) random order, so each follows each other equally often on
    average: with a rotation, of three variants one followed the same
    neighbour in two rounds of three (the round after kernex's 150 MB of
    windows ran 1.3-1.6x slower, `conv C=16`).
    """
    samples = {name: [] for name in calls}
    for name, seconds in per_call_s.items():
        if seconds > SLOW_CALL_S:
            samples[name].append(seconds)
    names = [name for name in calls if not samples[name]]
    if not names:
        return samples
    order = random.Random(0)
    for round_ in range(rounds_for(per_call_s, budget)):
        for name in order.sample(names, len(names)):
            if per_call_s[name] > CAPPED_CALL_S and round_ >= budget.cap:
                continue
            samples[name].append(time_call(calls[name], args))
    return samples


def one_offs(
    measures: Mapping[str, Callable[[], float]], repeats: Mapping[str, int]
) -> dict[str, list[float]]:
    """Samples of measurements that are not plain calls (compiles, first calls).

    Interleaved like `interleaved`: round `r` takes one sample of every
    measure that wants more than `r`.
    """
    samples: dict[str, list[float]] = {name: [] for name in measures}
    for round_ in range(max(repeats.values())):
        for name, measure in measures.items():
            if round_ < repeats[name]:
                samples[name].append(measure())
    return samples
