"""The explicit heat equation with boundary regions, and its gradient.

One step updates the interior with the 5-point Laplacian, zeroes the first and
last rows, and copies the neighbouring column into the first and last columns
(later regions win: the corners take the copy). `jax.lax.fori_loop` runs the
steps. The step is written three ways: `eqx_stencil` region tables
(`.at[...].set(...)`), hand-written slices and `.at[].set`, and kernex 0.2.1's
function mesh (`F[index] = func`).

The gradient case also compares XLA's temporary memory of the compiled
gradients (`memory_analysis()`, compiled without running). kernex's gradient is
not run: its XLA temporary memory (reported in the memory table) is far above
this machine's RAM. That memory analysis is compiled in a child process and
left out when compiling takes over a minute.

The factories build a fresh kernex mesh on every call: kernex mutates its
table when called.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array

import eqx_stencil as es

from ._report import Bar, Row, Table, Traffic, ratio, verdict_cells
from ._runtime import ES, HAND, KERNEX, RuntimeCase, Variant, optional_kernex, run_case
from ._timing import Budget
from .laplacian import F32, STEP_COPY, copy_steps, field


N = 256
STEPS = 500
GRAD_STEPS = 200
ALPHA = 0.1
MIB = 2**20
ROOT = Path(__file__).resolve().parents[1]
KERNEX_COMPILE_LIMIT_S = 60.0
CHILD_START_S = 60.0  # a child's allowance for importing JAX and tracing
ES_KERNEX_STYLE = "eqx_stencil, rows 0.0 * u[0, 0]"
KERNEX_GRAD_SKIP = "not run: needs the XLA temp memory in the table below"
MEMORY_HEADERS = (
    "case",
    "variant",
    "XLA temp MiB",
    "ratio to hand-written",
    "bar",
    "met?",
)
GRAD_MEMORY_BAR = Bar(ES, "hand XLA temp", limit=1.5)

Step = Callable[[Array], Any]


def interior(u: Array) -> Array:
    """One explicit Euler step of the heat equation at a window's centre."""
    return u[0, 0] + ALPHA * (u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0])


def zero(u: Array) -> float:
    """Dirichlet rows: a constant, like the hand-written `.at[0, :].set(0.0)`."""
    return 0.0


def kernex_zero(u: Array) -> Array:
    """kernex's `lax.switch` needs every branch to return the same array type."""
    return 0.0 * u[0, 0]


def right(u: Array) -> Array:
    """The right neighbour (first column)."""
    return u[0, 1]


def left(u: Array) -> Array:
    """The left neighbour (last column)."""
    return u[0, -1]


def es_step(rows: Callable[[Array], Any] = zero) -> Step:
    """`eqx_stencil`: the interior and four boundary regions, the first and
    last rows computed by `rows`."""
    return (
        es.kmap(kernel_size=(3, 3), padding="same", relative=True)
        .at[1:-1, 1:-1]
        .set(interior)
        .at[0, :]
        .set(rows)
        .at[-1, :]
        .set(rows)
        .at[:, 0]
        .set(right)
        .at[:, -1]
        .set(left)
    )


def hand_step() -> Step:
    """Hand-written: the interior from slices, the boundaries by `.at[].set`."""

    def step(u: Array) -> Array:
        c = u[1:-1, 1:-1]
        lap = u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4 * c
        return (
            jnp.zeros_like(u)
            .at[1:-1, 1:-1]
            .set(c + ALPHA * lap)
            .at[0, :]
            .set(0.0)
            .at[-1, :]
            .set(0.0)
            .at[:, 0]
            .set(u[:, 1])
            .at[:, -1]
            .set(u[:, -2])
        )

    return step


def kernex_step() -> Step:
    """kernex's function mesh: one function per region; needs kernex installed."""
    import kernex  # pyright: ignore[reportMissingImports]

    mesh = kernex.kmap(kernel_size=(3, 3), padding="same", relative=True)
    mesh[1:-1, 1:-1] = interior
    mesh[0, :] = kernex_zero
    mesh[-1, :] = kernex_zero
    mesh[:, 0] = right
    mesh[:, -1] = left
    return mesh


def evolve(step: Step, steps: int) -> Step:
    """`steps` applications of `step` in a `jax.lax.fori_loop`."""

    def run(u0: Array) -> Array:
        return jax.lax.fori_loop(0, steps, lambda _, u: step(u), u0)

    return run


def loss_grad(step: Step, steps: int) -> Step:
    """The gradient of `sum(u_T**2)` with respect to the initial field."""

    def loss(u0: Array) -> Array:
        return jnp.sum(evolve(step, steps)(u0) ** 2)

    return jax.grad(loss)


def case(n: int = N, steps: int = STEPS) -> RuntimeCase:
    """`steps` heat steps of an `n`×`n` field against slices and kernex.

    Its effective memory throughput is reported against `steps` in-place
    elementwise passes over the same field, not held to a target: the 256 KiB
    field stays in the L2 cache, where a step's ten flops and five loads per
    point, not the bytes, set its time."""
    variants = [
        Variant(ES, evolve(es_step(), steps)),
        Variant(HAND, evolve(hand_step(), steps)),
        Variant(STEP_COPY, copy_steps(steps), checked=False),
    ]
    if optional_kernex() is not None:
        variants.append(Variant(KERNEX, evolve(kernex_step(), steps), fragile=True))
    return RuntimeCase(
        f"heat {n}², {steps} steps",
        lambda: (field(n),),
        variants,
        bars=(Bar(ES, HAND, limit=1.05, target=1.0),),
        traffic=step_traffic(n, steps),
    )


def step_traffic(
    n: int,
    steps: int,
    variants: tuple[str, ...] = (ES, HAND),
    batch: int = 1,
    mask_bytes: int = 0,
) -> Traffic:
    """`steps` steps that read and write a `batch` of `n`×`n` float32 fields
    (and read `mask_bytes` per position), against as many in-place passes;
    reported, not judged (see `case`)."""
    copy = batch * steps * 2 * n * n * F32
    moved = copy + batch * steps * n * n * mask_bytes
    return Traffic(moved, STEP_COPY, copy, variants, judged=())


def grad_case(n: int = N, steps: int = GRAD_STEPS) -> RuntimeCase:
    """The gradient through `steps` heat steps, the Dirichlet rows written as a
    constant and kernex-style (a tap times 0: the same numbers, and it must
    cost the same); kernex's is not run."""
    variants = [
        Variant(ES, loss_grad(es_step(), steps)),
        Variant(ES_KERNEX_STYLE, loss_grad(es_step(kernex_zero), steps)),
        Variant(HAND, loss_grad(hand_step(), steps)),
    ]
    if optional_kernex() is not None:
        variants.append(
            Variant(KERNEX, loss_grad(kernex_step(), steps), skip=KERNEX_GRAD_SKIP)
        )
    return RuntimeCase(
        f"heat grad {n}², {steps} steps",
        lambda: (field(n),),
        variants,
        bars=(Bar(ES, HAND, limit=1.1), Bar(ES_KERNEX_STYLE, HAND, limit=1.1)),
    )


def temp_bytes(fn: Callable[..., Array], *args: Array) -> int | None:
    """XLA's temporary bytes for `fn(*args)`, compiled, not run (`None`: no data)."""
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    return None if stats is None else stats.temp_size_in_bytes


def kernex_grad_child(n: int, steps: int) -> None:
    """In a fresh process: compile kernex's gradient, print its temp bytes."""
    import time

    u0 = field(n)
    start = time.perf_counter()
    temp = temp_bytes(loss_grad(kernex_step(), steps), u0)
    seconds = time.perf_counter() - start
    print(json.dumps({"temp": temp, "compile_s": seconds}))


def kernex_grad_temp(n: int, steps: int) -> int | None | str:
    """kernex's gradient temp bytes, or why they are left out."""
    code = f"from benchmarks.heat import kernex_grad_child as c; c({n}, {steps})"
    limit = KERNEX_COMPILE_LIMIT_S
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=limit + CHILD_START_S,
        )
    except subprocess.TimeoutExpired:
        return f"omitted: compile over {limit:g} s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"omitted: compile failed ({last[:80]})"
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if report["compile_s"] > limit:
        return f"omitted: compile took {report['compile_s']:.0f} s"
    return report["temp"]


def _memory_row(label: str, name: str, temp: int | None | str, hand: int | None) -> Row:
    """One variant's XLA temp row, with its ratio to the hand-written gradient."""
    if isinstance(temp, str):
        cell, to_hand = temp, None
    elif temp is None:
        cell, to_hand = "n/a", None
    else:
        cell = f"{temp / MIB:,.2f}"
        to_hand = temp / hand if hand and name != HAND else None
    verdicts = []
    if name == ES and to_hand is not None:
        verdicts.append(GRAD_MEMORY_BAR.judge(to_hand))
    cells = (label, name, cell, ratio(to_hand))
    return Row(cells + verdict_cells(verdicts), tuple(verdicts))


def grad_memory(n: int = N, steps: int = GRAD_STEPS) -> Table:
    """XLA temp bytes of each compiled gradient (none is run)."""
    u0 = field(n)
    temps: dict[str, int | None | str] = {
        ES: temp_bytes(loss_grad(es_step(), steps), u0),
        HAND: temp_bytes(loss_grad(hand_step(), steps), u0),
    }
    if optional_kernex() is not None:
        temps[KERNEX] = kernex_grad_temp(n, steps)
    return memory_table(f"heat grad {n}², {steps} steps", temps)


def memory_table(label: str, temps: dict[str, int | None | str]) -> Table:
    """The XLA temp rows of one case, each with its ratio to `temps[HAND]`."""
    value = temps[HAND]
    hand = value if isinstance(value, int) else None
    rows = tuple(_memory_row(label, name, temps[name], hand) for name in temps)
    return Table(MEMORY_HEADERS, rows)


def run_grad(budget: Budget) -> tuple[Table, Table]:
    """The gradient's timing table and its XLA temp memory table."""
    return run_case(grad_case(), budget), grad_memory()
