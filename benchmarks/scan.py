"""Sequential sweeps (`kscan`): explicit time marching and Gauss-Seidel.

`linear-convection` is the kernex README's `kscan` example at 1001×501 (time ×
space): region functions set the boundary and initial rows, and each later
row is computed from the one before it, so `eqx_stencil` scans row by row.
`linear-convection-vmap` runs it for a batch of `ENSEMBLE` initial rows under
`jax.vmap` (the first row read from the input): the scan must stay a row
scan when batched. `gauss-seidel` reads the updated left and upper
neighbours, so it is swept cell by cell. The plan `eqx_stencil.kscan` takes
is stated in the case title as its docstring gives it (every updated cell
read lies in an earlier row: row by row; otherwise cell by cell); the suite
does not ask the private planner.
The row scan's bar is issue 13's 1.2× the hand-written row `lax.scan` (its
carry is the result rows, as the hand-written one's); the cell sweep keeps
2× (it measures 1.0×).

Each is compared with a hand-written `lax.scan` / `lax.fori_loop` and with
kernex 0.2.1's `kscan`. kernex's linear convection takes tens of seconds a
call (37 s on 2 idle CPUs, over a minute under load), so it is called once,
in a child process killed after `KERNEX_LIMIT_S` (`Variant.once`, `limit_s`):
the case stays under about a minute.

The factories build a fresh kernex mesh on every call: kernex mutates its
table when called.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

import eqx_stencil as es

from ._report import Bar
from ._runtime import ES, HAND, KERNEX, RuntimeCase, Variant, optional_kernex
from .laplacian import field


Fn = Callable[[Array], Array]

# The README's linear convection, `nt` time rows by `nx` cells.
NT, NX = 1001, 501
TMAX, XMAX, C = 0.5, 2.0, 0.5
GS_N = 201  # Gauss-Seidel grid side
ENSEMBLE = 8  # batch of the vmapped convection
KERNEX_LIMIT_S = 55.0  # kernex's convection child: import, compile, one call
ROW_BARS = (Bar(ES, HAND, limit=1.2),)
CELL_BARS = (Bar(ES, HAND, limit=2.0),)


def _courant(nt: int, nx: int) -> float:
    """`c dt/dx` of the README's grid."""
    dt, dx = TMAX / (nt - 1), XMAX / (nx - 1)
    return C * dt / dx


def _square_wave(nx: int) -> tuple[int, int]:
    """First and end cell of the README's initial square wave (`u = 2`)."""
    return int((nx - 1) / 4) + 1, int((nx - 1) / 2)


def _convection_step(courant: float) -> Fn:
    """The README's upwind step at one cell, by named relative indices."""

    def linear_convection(u: Array) -> Array:
        return u["i", "n-1"] - courant * (u["i", "n-1"] - u["i-1", "n-1"])

    return linear_convection


def _row_scan() -> es.Stencil:
    """The README's `kscan`: 3×3 windows, time `n` and space `i` named."""
    return es.kscan(
        kernel_size=(3, 3),
        padding=((1, 1), (1, 1)),
        named_axis={0: "n", 1: "i"},
        relative=True,
    )


def _march(u0: Array, courant: float, nt: int) -> Array:
    """Hand-written: `nt - 1` upwind steps from row `u0`, one `lax.scan` step
    per time row, slices for the update; every row, `u0` first."""

    def body(prev: Array, _: None) -> tuple[Array, Array]:
        new = prev.at[1:-1].set(prev[1:-1] - courant * (prev[1:-1] - prev[:-2]))
        return new, new

    _, rows = lax.scan(body, u0, None, length=nt - 1)
    return jnp.concatenate([u0[None], rows])


def es_convection(nt: int = NT, nx: int = NX) -> Fn:
    """`eqx_stencil`: the README's mesh as a region table."""
    q, h = _square_wave(nx)
    step = _convection_step(_courant(nt, nx))
    one, two = (lambda u: 1.0), (lambda u: 2.0)
    return (
        _row_scan()
        .at[:, 0]
        .set(one)
        .at[:, -1]
        .set(one)
        .at[:, :q]
        .set(one)
        .at[:, h:]
        .set(one)
        .at[0:1, q:h]
        .set(two)
        .at[1:, 1:-1]
        .set(step)
    )


def hand_convection(nt: int = NT, nx: int = NX) -> Fn:
    """Hand-written: one `lax.scan` step per time row, slices for the update."""
    q, h = _square_wave(nx)
    courant = _courant(nt, nx)

    def march(u: Array) -> Array:
        return _march(jnp.ones(nx, u.dtype).at[q:h].set(2.0), courant, nt)

    return march


def es_ensemble(nt: int = NT, nx: int = NX) -> Fn:
    """`eqx_stencil`, `vmap`ped: the first row from the input, walls at 1."""
    step = _convection_step(_courant(nt, nx))
    one, keep = (lambda u: 1.0), (lambda u: u["i", "n"])
    stencil = (
        _row_scan()
        .at[:, 0]
        .set(one)
        .at[:, -1]
        .set(one)
        .at[0:1, 1:-1]
        .set(keep)
        .at[1:, 1:-1]
        .set(step)
    )
    return jax.vmap(stencil)


def hand_ensemble(nt: int = NT, nx: int = NX) -> Fn:
    """Hand-written, `vmap`ped: the row `lax.scan` from the input's first row."""
    courant = _courant(nt, nx)

    def march(u: Array) -> Array:
        return _march(u[0].at[0].set(1.0).at[-1].set(1.0), courant, nt)

    return jax.vmap(march)


def kernex_convection(nt: int = NT, nx: int = NX) -> Fn:
    """The README's code with kernex's mutable mesh; needs kernex installed."""
    import kernex

    q, h = _square_wave(nx)
    mesh = kernex.kscan(
        kernel_size=(3, 3),
        padding=((1, 1), (1, 1)),
        named_axis={0: "n", 1: "i"},
        relative=True,
    )

    def bc(u: Array) -> int:
        return 1

    def ic1(u: Array) -> int:
        return 1

    def ic2(u: Array) -> int:
        return 2

    mesh[:, 0] = mesh[:, -1] = bc
    mesh[:, :q] = mesh[:, h:] = ic1
    mesh[0:1, q:h] = ic2
    mesh[1:, 1:-1] = _convection_step(_courant(nt, nx))
    return mesh


def _gauss_seidel(w: Array) -> Array:
    """The mean of the four neighbours (window-corner indexing)."""
    return 0.25 * (w[0, 1] + w[1, 0] + w[1, 2] + w[2, 1])


def es_gauss_seidel() -> Fn:
    """`eqx_stencil`: one sequential sweep, zero padding."""
    return es.kscan(_gauss_seidel, kernel_size=(3, 3), padding=1)


def hand_gauss_seidel() -> Fn:
    """Hand-written: a `lax.fori_loop` over the cells in row-major order."""

    def sweep(u: Array) -> Array:
        cols = u.shape[1]

        def body(k: Array, p: Array) -> Array:
            i, j = k // cols, k % cols
            w = lax.dynamic_slice(p, (i, j), (3, 3))
            v = _gauss_seidel(w)
            return lax.dynamic_update_slice(p, v[None, None], (i + 1, j + 1))

        p = lax.fori_loop(0, u.size, body, jnp.pad(u, 1))
        return p[1:-1, 1:-1]

    return sweep


def kernex_gauss_seidel() -> Fn:
    """kernex's `kscan` with the same function; needs kernex installed."""
    import kernex

    return kernex.kscan(kernel_size=(3, 3), padding=1)(_gauss_seidel)


def convection_case(nt: int = NT, nx: int = NX) -> RuntimeCase:
    """The README's linear convection against `lax.scan` and kernex (one call)."""
    variants = [
        Variant(ES, es_convection(nt, nx)),
        Variant(HAND, hand_convection(nt, nx)),
    ]
    if optional_kernex() is not None:
        kernex = kernex_convection(nt, nx)
        variants.append(
            Variant(KERNEX, kernex, fragile=True, once=True, limit_s=KERNEX_LIMIT_S)
        )
    return RuntimeCase(
        f"linear convection {nt}×{nx} (row-by-row plan)",
        lambda: (jnp.ones((nt, nx)),),
        variants,
        bars=ROW_BARS,
        factory=(f"{__name__}:convection_case", (nt, nx)),
    )


def ensemble_case(batch: int = ENSEMBLE, nt: int = NT, nx: int = NX) -> RuntimeCase:
    """The convection of `batch` initial rows under `jax.vmap`."""
    rng = np.random.default_rng(0)
    rows = rng.uniform(1.0, 2.0, (batch, 1, nx)).astype(np.float32)
    start = np.broadcast_to(rows, (batch, nt, nx))
    return RuntimeCase(
        f"linear convection {nt}×{nx}, vmap over {batch} (row-by-row plan)",
        lambda: (jax.device_put(start),),
        [Variant(ES, es_ensemble(nt, nx)), Variant(HAND, hand_ensemble(nt, nx))],
        bars=ROW_BARS,
    )


def gauss_seidel_case(n: int = GS_N) -> RuntimeCase:
    """A Gauss-Seidel sweep against `lax.fori_loop` and kernex."""
    variants = [Variant(ES, es_gauss_seidel()), Variant(HAND, hand_gauss_seidel())]
    if optional_kernex() is not None:
        variants.append(Variant(KERNEX, kernex_gauss_seidel()))
    return RuntimeCase(
        f"Gauss-Seidel {n}² (cell-by-cell plan)",
        lambda: (field(n),),
        variants,
        bars=CELL_BARS,
    )
