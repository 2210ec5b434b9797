"""Multi-channel convolution: `jnp.sum(x * w)` over a (C, 3, 3) window.

`case`: the stencil (whichever lowering the rule picks) against `lax.conv`.
`threshold_case`: a (C, k, k) window into O outputs, every lowering forced
(`_conv_lowering.LOWERINGS`), on both sides of one of the rule's thresholds:
the lowering the rule picks must be the fastest.
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
import eqx_stencil._conv_lowering as conv_lowering

from ._report import Bar
from ._runtime import ES, KERNEX, LAX, RuntimeCase, Variant, optional_kernex


TOLERANCE = 5e-3  # lax convolutions may run in TF32 on GPUs
PADDING = ("valid", "same", "same")
# kernex materialises every window: one call takes about 3 s per GiB of
# windows on a 2-core CPU, so past this it would take well over 5 s.
KERNEX_MAX_WINDOW_BYTES = 1.5 * 2**30


def window_sum(x: Array, w: Array) -> Array:
    """The window function: correlation of the window with the weights."""
    return jnp.sum(x * w)


def lax_conv(x: Array, w: Array) -> Array:
    """`lax.conv_general_dilated` on a batch of one, NCHW/OIHW: `w` is
    `(C, k, k)` for one output or `(O, C, k, k)`."""
    dimensions = ("NCHW", "OIHW", "NCHW")
    rhs = w[None] if w.ndim == 3 else w
    out = lax.conv_general_dilated(x[None], rhs, (1, 1), "SAME", None, None, dimensions)
    # The stencil's shape: (1, n, n), with the outputs last if more than one.
    return out[0] if w.ndim == 3 else jnp.moveaxis(out, 1, -1)


def _args(c: int, n: int) -> tuple[Array, Array]:
    """A random (c, n, n) image and (c, 3, 3) weights (outputs of unit scale)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((c, n, n), np.float32)
    w = rng.standard_normal((c, 3, 3), np.float32) / np.sqrt(9 * c)
    return jax.device_put(x), jax.device_put(w)


def _kernex(c: int, n: int) -> Variant | None:
    """kernex's convolution, skipped when its windows would be too big."""
    kex = optional_kernex()
    if kex is None:
        return None
    fn = kex.kmap(kernel_size=(c, 3, 3), padding=PADDING)(window_sum)
    window_bytes = n * n * c * 9 * 4
    skip = None
    if window_bytes > KERNEX_MAX_WINDOW_BYTES:
        skip = f"{window_bytes / 2**30:.1f} GiB of windows"
    return Variant(KERNEX, fn, skip=skip)


def case(c: int, n: int) -> RuntimeCase:
    """Convolution of a (c, n, n) image against lax.conv (and kernex)."""
    stencil = es.kmap(window_sum, kernel_size=(c, 3, 3), padding=PADDING)
    variants = [Variant(ES, stencil), Variant(LAX, lax_conv, tolerance=TOLERANCE)]
    kernex = _kernex(c, n)
    if kernex is not None:
        variants.append(kernex)
    # Few channels: the unrolled slices; from `MIN_CONTRACTED` on, the
    # contraction (issue 13: at most lax.conv's time).
    few = c < conv_lowering.MIN_CONTRACTED
    bar = Bar(ES, LAX, limit=0.5 if few else 1.0)
    return RuntimeCase(f"conv C={c} {c}×{n}×{n}", lambda: _args(c, n), variants, (bar,))


def _into_outputs(x: Array, w: Array) -> Array:
    """The window function for `O` outputs: `w` is `(O, C, k, k)`."""
    return jnp.tensordot(w, x, 3)


def forced(fn: Callable[..., Any], lowering: str) -> Callable[..., Any]:
    """`fn` traced with its linear functions lowered by `lowering`."""

    def run(*args: Any) -> Any:
        with conv_lowering.forced_lowering(lowering):
            return fn(*args)

    return run


THRESHOLD_NOISE = 1.1


def _value_and_gradients(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A loss of `fn(x, w)` and its gradients with respect to `x` and `w`."""

    def loss(x: Array, w: Array) -> Array:
        return jnp.sum(jnp.sin(fn(x, w)))

    return jax.value_and_grad(loss, argnums=(0, 1))


def _flat(out: Any) -> np.ndarray:
    """Every leaf of `out`, raveled into one array (for the output check)."""
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(out)])


def threshold_case(
    c: int, k: int, outputs: int, n: int, gradient: bool = False, bar: bool = True
) -> RuntimeCase:
    """A `(c, k, k)` window into `outputs` entries on a `(c, n, n)` image,
    each lowering forced, beside the stencil and `lax.conv`: the lowering the
    rule picks must be the fastest (`bar=False`: the ratios are only shown).

    `gradient`: time a loss's value and its gradients with respect to the
    image and the weights instead of the forward pass."""
    func = window_sum if outputs == 1 else _into_outputs
    stencil = es.kmap(func, kernel_size=(c, k, k), padding=PADDING)
    taps = c * k * k
    # The planes of a contraction of the padded image ("same": n + k - 1).
    plane_bytes = 4 * k * k * (n + k - 1) ** 2
    picked = conv_lowering.lowering_for(taps, outputs, c, plane_bytes)
    timed = _value_and_gradients if gradient else (lambda fn: fn)

    def variant(name: str, fn: Callable[..., Any]) -> Variant:
        # A weight gradient sums over every position: float32 sums in another
        # order differ by more than one output does.
        return Variant(name, timed(fn), layout=_flat, tolerance=TOLERANCE)

    variants = [variant(ES, stencil)]
    variants += [
        variant(f"{name} (forced)", forced(stencil, name))
        for name in conv_lowering.LOWERINGS
    ]
    variants.append(variant(LAX, lax_conv))
    # At a threshold the two sides cost about the same: the picked one may
    # trail by the machine's noise.
    bars = tuple(
        Bar(
            f"{picked} (forced)",
            f"{other} (forced)",
            limit=THRESHOLD_NOISE if bar else None,
        )
        for other in conv_lowering.LOWERINGS
        if other != picked
    )
    rng = np.random.default_rng(0)
    shape = (c, k, k) if outputs == 1 else (outputs, c, k, k)
    weights = rng.standard_normal(shape, np.float32) / np.sqrt(taps)
    x = rng.standard_normal((c, n, n), np.float32)
    timing = "value and gradients" if gradient else "forward"
    name = (
        f"threshold C={c} {k}×{k} → {outputs} ({taps * outputs} taps×outputs) "
        f"{n}², {timing}"
    )
    args = lambda: (jax.device_put(x), jax.device_put(weights))  # noqa: E731
    return RuntimeCase(name, args, variants, bars)
