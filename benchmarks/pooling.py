"""Max-pooling 2×2, stride 2."""

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


def lax_pool(x: Array) -> Array:
    """`lax.reduce_window` max over 2×2 windows, stride 2."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (2, 2), (2, 2), "VALID")


def hand_pool(x: Array) -> Array:
    """Reshape into 2×2 blocks and take their max."""
    n, m = x.shape
    return x.reshape(n // 2, 2, m // 2, 2).max(axis=(1, 3))


def case(n: int = 1024) -> RuntimeCase:
    """Max-pool an `n`×`n` array against `lax.reduce_window`.

    Memory-bound: three comparisons per output, which reads 16 bytes and
    writes 4."""
    variants = [
        Variant(ES, es.kmap(jnp.max, kernel_size=(2, 2), strides=2)),
        Variant(HAND, hand_pool),
        Variant(LAX, lax_pool),
        Variant(COPY, copy(), checked=False),
    ]
    kex = optional_kernex()
    if kex is not None:
        variants.append(
            Variant(KERNEX, kex.kmap(kernel_size=(2, 2), strides=2)(jnp.max))
        )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n), np.float32)
    return RuntimeCase(
        f"max-pool 2×2/2 {n}²",
        lambda: (jax.device_put(x),),
        variants,
        (Bar(ES, LAX, limit=1.5),),
        traffic=Traffic(
            (n * n + (n // 2) ** 2) * F32, COPY, 2 * n * n * F32, (ES, HAND, LAX), (ES,)
        ),
    )
