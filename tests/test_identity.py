"""A function applied to the identity matrix without multiplying by it
(`_identity.py`), as the convolution lowering reads a linear function's
weights.

Every case is compared with the same function run by JAX on `jnp.eye`, and
the contractions must be gone from the traced program.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_stencil as es
from eqx_stencil._identity import on_identity


N = 4
W = np.random.default_rng(0).standard_normal((N, 3, 2)).astype(np.float32)
W2 = W.reshape(N, 6)

CONTRACTIONS = {
    "left @": lambda e: e @ W2,
    "right @": lambda e: W2.T @ e,
    "transposed": lambda e: e.T @ W2,
    "tensordot": lambda e: jnp.tensordot(e, W, axes=([1], [0])),
    "tensordot first axis": lambda e: jnp.tensordot(W, e, axes=([0], [0])),
    "einsum": lambda e: jnp.einsum("ij,jkl->ikl", e, W),
    "cast then @": lambda e: e.astype(jnp.float16) @ W2.astype(jnp.float16),
    "nested jit": jax.jit(lambda e: jnp.stack([e @ W2, 2 * (e @ W2)])),
    "vmap of rows": jax.vmap(lambda row: W2.T @ row),
}
# The identity used otherwise: built, and the function run as written.
OTHER_USES = {
    "added": lambda e: e + W2[:, :N],
    "scaled": lambda e: 3.0 * e,
    "both sides": lambda e: e @ e,
    "batched dot": lambda e: jnp.einsum("ij,ij->i", e, W2[:, :N]),
    "returned": lambda e: e,
}


def _dots(fn, dtype=jnp.float32) -> int:
    jaxpr = jax.make_jaxpr(lambda: on_identity(fn, N, dtype))()
    return str(jaxpr).count("dot_general")


@pytest.mark.parametrize("name", list(CONTRACTIONS))
def test_contractions_are_read_off(name):
    fn = CONTRACTIONS[name]
    expected = fn(jnp.eye(N, dtype=jnp.float32))
    found = on_identity(fn, N, jnp.float32)
    assert found.shape == expected.shape and found.dtype == expected.dtype
    np.testing.assert_array_equal(np.asarray(found), np.asarray(expected))
    assert _dots(fn) == 0


@pytest.mark.parametrize("name", list(OTHER_USES))
def test_other_uses_build_the_identity(name):
    fn = OTHER_USES[name]
    expected = fn(jnp.eye(N, dtype=jnp.float32))
    found = on_identity(fn, N, jnp.float32)
    np.testing.assert_allclose(np.asarray(found), np.asarray(expected), rtol=1e-6)


def test_traced_operands_and_gradients():
    """Inside a trace (weights a learnable argument), values and gradients
    equal the product with `jnp.eye`."""

    def read(w):
        return on_identity(lambda e: jnp.tensordot(e, w, axes=1), N, jnp.float32)

    def multiply(w):
        return jnp.tensordot(jnp.eye(N), w, axes=1)

    loss = lambda f: lambda w: jnp.sum(jnp.sin(f(w)))  # noqa: E731
    found = jax.jit(jax.value_and_grad(loss(read)))(W)
    expected = jax.jit(jax.value_and_grad(loss(multiply)))(W)
    for a, b in zip(found, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_nn_conv_is_one_convolution_and_nothing_else():
    """`es.nn.Conv2d`'s traced forward pass is the convolution and layout
    changes: no product of its weights with an identity (it ran on every
    call), as in `eqx.nn.Conv2d`."""
    layer = eqx.filter_eval_shape(es.nn.Conv2d, 4, 5, 3, key=jax.random.key(0))
    x = jax.ShapeDtypeStruct((4, 8, 8), jnp.float32)
    jaxpr = str(jax.make_jaxpr(lambda m, x: m(x))(layer, x))
    assert jaxpr.count("conv_general_dilated") == 1
    assert "dot_general" not in jaxpr


def test_kmap_with_einsum_reads_its_weights():
    stencil = es.kmap(
        lambda window, w: jnp.einsum("cij,ocij->o", window, w),
        kernel_size=(3, 3, 3),
        padding=((0, 0), (1, 1), (1, 1)),
    )
    x = np.random.default_rng(1).standard_normal((3, 9, 9)).astype(np.float32)
    w = np.random.default_rng(2).standard_normal((6, 3, 3, 3)).astype(np.float32)
    jaxpr = str(jax.make_jaxpr(stencil)(x, w))
    assert "conv_general_dilated" in jaxpr and "dot_general" not in jaxpr
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    expected = np.zeros((1, 9, 9, 6), np.float32)
    for i in range(9):
        for j in range(9):
            window = padded[:, i : i + 3, j : j + 3]
            expected[0, i, j] = np.einsum("cij,ocij->o", window, w)
    found = jax.jit(stencil)(x, w)
    np.testing.assert_allclose(np.asarray(found), expected, rtol=1e-4, atol=1e-5)
