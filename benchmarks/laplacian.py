"""The 5-point Laplacian: zero (`same`) and periodic (`wrap`) boundaries.

The factories build a fresh function object on every call, so the compile
and first-call cases can defeat every cache keyed on the function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

import eqx_stencil as es

from ._report import Bar, Traffic
from ._runtime import ES, HAND, KERNEX, LAX, RuntimeCase, Variant, optional_kernex


Fn = Callable[[Array], Any]  # a stencil returns a PyTree
COPY = "copy u*2.0"
STEP_COPY = "copy -u per step"
F32 = 4  # bytes
LAX_TOLERANCE = 1e-2  # convolutions may run in TF32 on GPUs


def _taps() -> Fn:
    """A fresh relative-index Laplacian window function."""

    def taps(u: Array) -> Array:
        return u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]

    return taps


def es_laplacian(boundary: str = "constant") -> Fn:
    """`eqx_stencil` Laplacian, padding `same`."""
    return es.kmap(
        _taps(), kernel_size=(3, 3), padding="same", relative=True, boundary=boundary
    )


def hand_laplacian() -> Fn:
    """Hand-written zero-boundary Laplacian: pad, then slices."""

    def hand(u: Array) -> Array:
        p = jnp.pad(u, 1)
        return (
            p[2:, 1:-1] + p[:-2, 1:-1] + p[1:-1, 2:] + p[1:-1, :-2] - 4 * p[1:-1, 1:-1]
        )

    return hand


def hand_wrap_laplacian() -> Fn:
    """Hand-written periodic Laplacian with `jnp.roll`."""

    def hand(u: Array) -> Array:
        return (
            jnp.roll(u, -1, 0)
            + jnp.roll(u, 1, 0)
            + jnp.roll(u, -1, 1)
            + jnp.roll(u, 1, 1)
            - 4 * u
        )

    return hand


def lax_laplacian() -> Fn:
    """Zero-boundary Laplacian as `lax.conv_general_dilated` with a 3×3 kernel."""
    kernel = jnp.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])

    def conv(u: Array) -> Array:
        out = lax.conv_general_dilated(
            u[None, None], kernel[None, None].astype(u.dtype), (1, 1), "SAME"
        )
        return out[0, 0]

    return conv


def kernex_laplacian() -> Fn:
    """kernex's Laplacian (zero padding); needs kernex installed."""
    import kernex

    return kernex.kmap(kernel_size=(3, 3), padding="same", relative=True)(_taps())


def copy() -> Fn:
    """An elementwise pass over the array: the memory-bandwidth floor."""

    def double(u: Array) -> Array:
        return u * 2.0

    return double


def copy_steps(steps: int) -> Fn:
    """`steps` elementwise passes in a `fori_loop` (each in place in the loop
    carry): the bandwidth a time-stepped case can reach."""

    def run(u0: Array) -> Array:
        return jax.lax.fori_loop(0, steps, lambda _, u: -u, u0)

    return run


def one_pass(n: int, variants: tuple[str, ...]) -> Traffic:
    """The traffic of one pass over an `n`×`n` float32 field (read it, write
    the result), against the copy `u*2.0` of the same field."""
    moved = 2 * n * n * F32
    return Traffic(moved, COPY, moved, variants, judged=(ES,))


def field(n: int) -> Array:
    """A random `n`×`n` float32 field."""
    rng = np.random.default_rng(0)
    return jax.device_put(rng.standard_normal((n, n), np.float32))


def _with_kernex(variants: list[Variant]) -> list[Variant]:
    """`variants`, plus kernex's when it is installed."""
    if optional_kernex() is None:
        return variants
    return [*variants, Variant(KERNEX, kernex_laplacian())]


def zero_boundary_case(n: int = 2048) -> RuntimeCase:
    """Laplacian, zero boundary, against pad+slice, conv, copy and kernex.

    Memory-bound: under one flop per byte moved (6 per output, 8 bytes), and
    the two 16 MiB fields do not fit in the caches."""
    variants = [
        Variant(ES, es_laplacian()),
        Variant(HAND, hand_laplacian()),
        Variant(LAX, lax_laplacian(), tolerance=LAX_TOLERANCE),
        Variant(COPY, copy(), checked=False),
    ]
    return RuntimeCase(
        f"Laplacian {n}² same, zero",
        lambda: (field(n),),
        _with_kernex(variants),
        bars=(Bar(ES, HAND, limit=1.1, target=0.8),),
        traffic=one_pass(n, (ES, HAND, LAX)),
    )


def wrap_case(n: int = 2048) -> RuntimeCase:
    """Laplacian, periodic boundary, against `jnp.roll` (kernex has no wrap) and
    the copy; memory-bound like the zero-boundary case."""
    return RuntimeCase(
        f"Laplacian {n}² wrap",
        lambda: (field(n),),
        [
            Variant(ES, es_laplacian("wrap")),
            Variant(HAND, hand_wrap_laplacian()),
            Variant(COPY, copy(), checked=False),
        ],
        bars=(Bar(ES, HAND, limit=1.0),),
        traffic=one_pass(n, (ES, HAND)),
    )
