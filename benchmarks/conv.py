"""Multi-channel 3×3 convolution: `jnp.sum(x * w)` over a (C, 3, 3) window.

`case`: the stencil (whichever lowering the rule picks) against `lax.conv`.
`threshold_case`: both lowerings forced, at a channel count just below or
just above the convolution lowering's threshold (`MIN_CONV_TAPS` taps per
output): the side the rule picks must be the faster one.
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
    """`lax.conv_general_dilated` on a batch of one, NCHW/OIHW."""
    dimensions = ("NCHW", "OIHW", "NCHW")
    return lax.conv_general_dilated(
        x[None], w[None], (1, 1), "SAME", None, None, dimensions
    )[0]


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
    # Few taps: the unrolled slices beat XLA:CPU's convolution; many taps:
    # the convolution lowering must match lax.conv (issue 13).
    few = c * 9 < conv_lowering.MIN_CONV_TAPS
    bar = Bar(ES, LAX, limit=0.5 if few else 1.0, same_program=not few)
    return RuntimeCase(f"conv C={c} {c}×{n}×{n}", lambda: _args(c, n), variants, (bar,))


SLICES = "slices"
CONV = "conv lowering"


def forced(fn: Callable[..., Any], min_taps: int) -> Callable[..., Any]:
    """`fn` traced with the convolution lowering's threshold at `min_taps`
    (1: every linear function is a convolution; huge: none is)."""

    def run(*args: Any) -> Any:
        saved = conv_lowering.MIN_CONV_TAPS
        conv_lowering.MIN_CONV_TAPS = min_taps
        try:
            return fn(*args)
        finally:
            conv_lowering.MIN_CONV_TAPS = saved

    return run


def threshold_case(c: int, n: int) -> RuntimeCase:
    """Slices and the convolution lowering forced, at `c * 9` taps: the one
    the rule picks (slices below `MIN_CONV_TAPS`, the convolution from it on)
    must be the faster."""
    stencil = es.kmap(window_sum, kernel_size=(c, 3, 3), padding=PADDING)
    variants = [
        Variant(ES, stencil),
        Variant(SLICES, forced(stencil, 2**62)),
        Variant(CONV, forced(stencil, 1)),
        Variant(LAX, lax_conv, tolerance=TOLERANCE),
    ]
    picked, other = (
        (SLICES, CONV) if c * 9 < conv_lowering.MIN_CONV_TAPS else (CONV, SLICES)
    )
    bar = Bar(picked, other, limit=1.0)
    name = f"conv threshold C={c} ({c * 9} taps) {c}×{n}×{n}"
    return RuntimeCase(name, lambda: _args(c, n), variants, (bar,))
