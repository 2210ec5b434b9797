"""Heat around obstacles given as data: a traced mask against `jnp.where`.

One explicit heat step: the 5-point update inside, cold rows on top and
bottom, a hot left column and a cold right one, and the obstacles (discs)
held cold. The obstacle mask is given three ways: as data
(`step.at[mask].set(cold)` with a `jax.Array` argument of the jitted
function), as a static NumPy mask (the same values, baked into the program),
and by hand (`jnp.where(mask, 0.0, new)` after the slicing step). Then the
same with `vmap` over 16 different masks, and the compilations counted: the
vmapped program, ten masks under one `jit`, ten eager calls.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

import eqx_stencil as es
from eqx_stencil._call import _programs

from ._report import Bar, Row, Table, Verdict, verdict_cells
from ._runtime import ES, HAND, RuntimeCase, Variant, run_case
from ._timing import Budget
from .heat import ALPHA, interior, step_traffic
from .laplacian import STEP_COPY, copy_steps, field


N = 256
STEPS = 200
BATCH = 16
CALLS = 10
STATIC = "eqx_stencil, static mask"
COMPILE_HEADERS = ("case", "variant", "compilations", "bar", "met?")


def cold(u: Array) -> float:
    """The obstacles and the cold walls."""
    return 0.0


def hot(u: Array) -> float:
    """The hot left wall."""
    return 1.0


def obstacles(n: int, seed: int, count: int = 6) -> np.ndarray:
    """`count` random discs in an `n`×`n` grid."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n]
    mask = np.zeros((n, n), bool)
    for cy, cx, r in zip(
        rng.uniform(0.2, 0.8, count) * n,
        rng.uniform(0.2, 0.8, count) * n,
        rng.uniform(0.03, 0.08, count) * n,
    ):
        mask |= (y - cy) ** 2 + (x - cx) ** 2 < r**2
    return mask


BASE = (
    es.kmap(kernel_size=(3, 3), padding="same", relative=True)
    .at[1:-1, 1:-1].set(interior)
    .at[0, :].set(cold)
    .at[-1, :].set(cold)
    .at[:, 0].set(hot)
    .at[:, -1].set(cold)
)  # fmt: skip


def hand_step(u: Array, mask: Array) -> Array:
    """Slicing for the step, `jnp.where` for the obstacles."""
    c = u[1:-1, 1:-1]
    lap = u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4 * c
    new = (
        jnp.zeros_like(u)
        .at[1:-1, 1:-1].set(c + ALPHA * lap)
        .at[:, 0].set(1.0)
    )  # fmt: skip
    return jnp.where(mask, 0.0, new)


def es_run(u0: Array, mask: Array) -> Array:
    """`STEPS` steps with the mask as data."""
    step = BASE.at[mask].set(cold)
    return jax.lax.fori_loop(0, STEPS, lambda _, u: step(u), u0)


def hand_run(u0: Array, mask: Array) -> Array:
    """`STEPS` hand-written steps."""
    return jax.lax.fori_loop(0, STEPS, lambda _, u: hand_step(u, mask), u0)


def static_run(mask: np.ndarray) -> Callable[[Array, Array], Array]:
    """`STEPS` steps with `mask` baked in as a static NumPy mask."""
    step = BASE.at[mask].set(cold)

    def run(u0: Array, unused: Array) -> Array:
        del unused
        return jax.lax.fori_loop(0, STEPS, lambda _, u: step(u), u0)

    return run


def copy_run(u0: Array, masks: Array) -> Array:
    """`STEPS` in-place passes over a field per mask (the copy)."""
    return copy_steps(STEPS)(jnp.broadcast_to(u0, masks.shape))


def single_case(n: int = N) -> RuntimeCase:
    """One obstacle mask: data, static and by hand. Throughput as for the heat
    case (reported, in cache); each step also reads the mask, one byte per
    position."""
    mask = obstacles(n, seed=0)
    return RuntimeCase(
        f"heat {n}², {STEPS} steps, obstacles",
        lambda: (field(n), jnp.asarray(mask)),
        [
            Variant(ES, es_run),
            Variant(STATIC, static_run(mask)),
            Variant(HAND, hand_run),
            Variant(STEP_COPY, copy_run, checked=False),
        ],
        bars=(Bar(ES, HAND, limit=1.2), Bar(STATIC, HAND, limit=None)),
        traffic=step_traffic(n, STEPS, (ES, STATIC, HAND), mask_bytes=1),
    )


def batch_masks(n: int = N, batch: int = BATCH, seed: int = 1) -> Array:
    """`batch` different obstacle masks."""
    return jnp.asarray(np.stack([obstacles(n, seed + i) for i in range(batch)]))


def vmap_case(n: int = N, batch: int = BATCH) -> RuntimeCase:
    """`vmap` over `batch` masks, one program, against the hand-written vmap."""
    return RuntimeCase(
        f"heat {n}², {STEPS} steps, vmap over {batch} obstacle masks",
        lambda: (field(n), batch_masks(n, batch)),
        [
            Variant(ES, jax.vmap(es_run, in_axes=(None, 0))),
            Variant(HAND, jax.vmap(hand_run, in_axes=(None, 0))),
            Variant(STEP_COPY, copy_run, checked=False),
        ],
        bars=(Bar(ES, HAND, limit=1.2),),
        traffic=step_traffic(n, STEPS, batch=batch, mask_bytes=1),
    )


def _compile_row(case: str, count: int) -> Row:
    verdict = Verdict("= 1 compilation", count == 1, None)
    return Row((case, ES, str(count)) + verdict_cells([verdict]), (verdict,))


def compilations(n: int = N) -> Table:
    """Compilations counted by traces of the jitted function (a cache miss
    retraces) and, for eager calls, by the programs `_call.py` compiled."""
    u0 = field(n)
    masks = batch_masks(n, CALLS, seed=100)
    traces: list[None] = []

    def traced(u0: Array, mask: Array) -> Array:
        traces.append(None)
        return es_run(u0, mask)

    batched = jax.jit(jax.vmap(traced, in_axes=(None, 0)))
    for start in (0, CALLS // 2):  # two different batches of masks
        jax.block_until_ready(batched(u0, masks[start : start + CALLS // 2]))
    rows = [_compile_row(f"vmap over {CALLS // 2} masks, two batches", len(traces))]
    traces.clear()
    single = jax.jit(traced)
    for mask in masks:
        jax.block_until_ready(single(u0, mask))
    rows.append(_compile_row(f"{CALLS} masks under one jit", len(traces)))
    small = field(32)
    step = BASE.at[masks[0, :32, :32]].set(cold)
    jax.block_until_ready(step(small))
    before = len(_programs)
    for mask in masks:
        jax.block_until_ready(BASE.at[mask[:32, :32]].set(cold)(small))
    rows.append(
        _compile_row(f"{CALLS} eager calls, new masks", len(_programs) - before + 1)
    )
    return Table(COMPILE_HEADERS, tuple(rows))


def run(budget: Budget) -> tuple[Table, ...]:
    """The timing and throughput tables and the compilation counts."""
    tables: list[Table] = []
    for case in (single_case(), vmap_case()):
        result = run_case(case, budget)
        tables += [result] if isinstance(result, Table) else result
    return (*tables, compilations())
