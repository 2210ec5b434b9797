"""Programs that hit known XLA miscompiles (docs/known-issues.md): our
lowerings must keep giving the right answer at default XLA flags."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_stencil as es
from eqx_stencil import _conv_lowering as conv_lowering, _lower


# The miscompiles happen at XLA's default optimisation level only: the fast
# suite compiles at -O0, where these programs are right with or without our
# workarounds, so only tests_thorough (default compilation) runs them.
pytestmark = pytest.mark.thorough


def test_vmap_window_gradient_of_a_long_strided_wrapped_window(monkeypatch):
    """XLA:CPU's fusion emitter (jaxlib 0.10.2) miscompiled the gradient of
    the vmap lowering's window stack here (any odd number of taps from 69
    on): one input row got a wrong gradient (row 4 of 69, 79 of 119). Reverse
    mode must match forward mode, whose program has no transposed stack."""
    monkeypatch.setattr(_lower, "MAX_UNROLLED_TAPS", -1)
    taps = 69
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((taps, 3, 4)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((taps, 1, 1)), jnp.float32)

    def f(w, k):
        return jnp.einsum("i...,i...->i", w, k)

    stencil = (
        es.kmap(
            f,
            kernel_size=(taps, 1, 1),
            strides=(1, 2, 1),
            padding=((0, 0), "valid", 2),
            boundary="wrap",
        )
        .at[..., 1:]
        .set(lambda w, k: f(w, -2 * k))
    )

    def loss(x):
        return jnp.sum(jnp.sin(stencil(x, k)))

    with conv_lowering.forced_lowering("slices"):
        rev = jax.jit(jax.grad(loss))(x)
        fwd = jax.jit(jax.jacfwd(loss))(x)
    np.testing.assert_allclose(rev, fwd, rtol=1e-4, atol=1e-4)
