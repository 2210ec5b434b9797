"""Multi-channel 3×3 convolution: `jnp.sum(x * w)` over a (C, 3, 3) window."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

import eqx_stencil as es
from eqx_stencil._conv_lowering import MIN_CONV_TAPS

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
    bar = Bar(ES, LAX, limit=0.5 if c * 9 < MIN_CONV_TAPS else 1.0)
    return RuntimeCase(f"conv C={c} {c}×{n}×{n}", lambda: _args(c, n), variants, (bar,))
