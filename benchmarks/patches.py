"""Patch extraction: 1-D windows of 3, padding `same`, `lambda w: w`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

import eqx_stencil as es

from ._report import Bar, Traffic
from ._runtime import ES, HAND, KERNEX, LAX, RuntimeCase, Variant, optional_kernex
from .laplacian import COPY, F32, copy


LAX_TOLERANCE = 1e-2  # convolutions may run in TF32 on GPUs


def window(w: Array) -> Array:
    """The window itself."""
    return w


def hand_patches(x: Array) -> Array:
    """Pad, then stack the three shifted slices."""
    p = jnp.pad(x, 1)
    return jnp.stack([p[:-2], p[1:-1], p[2:]], axis=-1)


def lax_patches(x: Array) -> Array:
    """`lax.conv_general_dilated_patches`, in its own (1, 3, n) layout."""
    return lax.conv_general_dilated_patches(x[None, None], (3,), (1,), "SAME")


def _patches_last(out: Array) -> Array:
    """(1, 3, n) patches as (n, 3), for the check."""
    return out[0].T


def case(n: int = 2**20) -> RuntimeCase:
    """Patches of an `n`-element vector against stacked slices.

    Pure data movement (no arithmetic): reads the vector, writes three times
    its size."""
    variants = [
        Variant(ES, es.kmap(window, kernel_size=3, padding="same")),
        Variant(HAND, hand_patches),
        Variant(LAX, lax_patches, layout=_patches_last, tolerance=LAX_TOLERANCE),
        Variant(COPY, copy(), checked=False),
    ]
    kex = optional_kernex()
    if kex is not None:
        variants.append(
            Variant(KERNEX, kex.kmap(kernel_size=(3,), padding="same")(window))
        )
    x = np.random.default_rng(0).standard_normal(n, np.float32)
    return RuntimeCase(
        f"patches k=3 {n:,} 1-D",
        lambda: (jax.device_put(x),),
        variants,
        (Bar(ES, HAND, limit=1.2),),
        traffic=Traffic((1 + 3) * n * F32, COPY, 2 * n * F32, (ES, HAND, LAX), (ES,)),
    )
