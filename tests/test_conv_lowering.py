"""Linear window functions lowered to a convolution (`_conv_lowering.py`).

Every case checks that the convolution is really emitted (or not), and
compares values with the NumPy loop over windows and gradients with the
slice lowering and with finite differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from reference import reference_kmap

import eqx_stencil as es
import eqx_stencil._conv_lowering as conv_lowering


def _x(shape, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def has_conv(fn, *args) -> bool:
    """Whether `fn(*args)` traces to a `conv_general_dilated`."""
    return "conv_general_dilated" in str(jax.make_jaxpr(fn)(*args))


@pytest.fixture
def every_size(monkeypatch):
    """Use the convolution for any number of taps."""
    monkeypatch.setattr(conv_lowering, "MIN_CONV_TAPS", 1)


def slices_only(fn):
    """`fn` traced with the convolution switched off (the slice lowerings)."""

    def run(*args):
        saved = conv_lowering.MIN_CONV_TAPS
        conv_lowering.MIN_CONV_TAPS = 10**9
        try:
            return fn(*args)
        finally:
            conv_lowering.MIN_CONV_TAPS = saved

    return run


def correlate(window, weights):
    return jnp.sum(window * weights)


GEOMETRIES = [
    dict(kernel_size=(3, 3), padding="same"),
    dict(kernel_size=(3, 4), strides=(2, 1), padding=((1, 2), (0, 3)), dilation=(1, 2)),
    dict(kernel_size=(2, 3), padding=2, boundary="wrap"),
    dict(
        kernel_size=(3, 3), strides=(1, 2), padding="same", dilation=2, boundary="edge"
    ),
    dict(kernel_size=(3, 2), padding=((2, 1), (1, 1)), boundary="reflect"),
    dict(kernel_size=(3, 3), padding=1, boundary="symmetric", cval=0),
    dict(kernel_size=(3, 3), padding=1, cval=1.5),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_values_equal_numpy(every_size, geometry):
    x = _x((9, 11))
    weights = _x(geometry["kernel_size"], 1)
    stencil = es.kmap(correlate, **geometry)
    assert has_conv(stencil, x, weights)
    reference_args = {k: v for k, v in geometry.items()}
    expected = reference_kmap(
        lambda w: np.sum(w * np.asarray(weights)), np.asarray(x), **reference_args
    )
    np.testing.assert_allclose(jax.jit(stencil)(x, weights), expected, atol=1e-5)


def test_whole_dim_becomes_channels_at_the_default_threshold():
    x, weights = _x((16, 9, 10)), _x((16, 3, 3), 1)
    stencil = es.kmap(correlate, kernel_size=(-1, 3, 3), padding=(0, 1, 1))
    assert has_conv(stencil, x, weights)
    expected = reference_kmap(
        lambda w: np.sum(w * np.asarray(weights)),
        np.asarray(x),
        (16, 3, 3),
        padding=(0, 1, 1),
    )
    np.testing.assert_allclose(jax.jit(stencil)(x, weights), expected, atol=1e-4)
    few = es.kmap(correlate, kernel_size=(-1, 3, 3), padding=(0, 1, 1))
    assert not has_conv(few, x[:3], weights[:3])  # 27 taps: slices


@pytest.mark.parametrize("geometry", GEOMETRIES[:4])
def test_gradients_equal_slice_lowering_and_finite_differences(every_size, geometry):
    x = _x((7, 8))
    weights = _x(geometry["kernel_size"], 1)
    stencil = es.kmap(correlate, **geometry)

    def loss(x, weights):
        return jnp.sum(jnp.sin(jnp.asarray(stencil(x, weights))))

    found = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, weights)
    expected = jax.jit(slices_only(jax.grad(loss, argnums=(0, 1))))(x, weights)
    for a, b in zip(found, expected):
        np.testing.assert_allclose(a, b, atol=1e-5)
    check_grads(loss, (x, weights), order=1, modes=("fwd", "rev"), atol=1e-2)


def test_multiple_fields_and_vector_outputs(every_size):
    fields = {"u": _x((8, 9)), "v": _x((8, 9), 2)}
    kernels = _x((4, 2, 3, 3), 3)  # 4 outputs, 2 fields

    def func(w, k):
        stacked = jnp.stack([w["u"], w["v"]])
        return jnp.tensordot(k, stacked, axes=3), jnp.einsum("ij,ij->", w["u"], k[0, 1])

    stencil = es.kmap(func, kernel_size=3, padding="same", boundary="reflect")
    assert has_conv(stencil, fields, kernels)
    vector, scalar = jax.jit(stencil)(fields, kernels)
    expected_vector, expected_scalar = jax.jit(slices_only(stencil))(fields, kernels)
    np.testing.assert_allclose(vector, expected_vector, atol=1e-5)
    np.testing.assert_allclose(scalar, expected_scalar, atol=1e-5)
    u, v = np.asarray(fields["u"]), np.asarray(fields["v"])
    k = np.asarray(kernels)
    ref_u = reference_kmap(lambda w: w, u, 3, padding="same", boundary="reflect")
    ref_v = reference_kmap(lambda w: w, v, 3, padding="same", boundary="reflect")
    np.testing.assert_allclose(
        vector,
        np.einsum("ofij,xyfij->xyo", k, np.stack([ref_u, ref_v], axis=2)),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "func",
    [
        lambda w, k: jnp.sum(w * k) + 1.0,  # affine
        lambda w, k: jnp.sum(w * w * k),  # quadratic
        lambda w, k: jnp.max(w * k),
    ],
)
def test_nonlinear_functions_keep_the_slice_lowering(every_size, func):
    x, weights = _x((6, 7)), _x((3, 3), 1)
    stencil = es.kmap(func, kernel_size=3, padding="same")
    assert not has_conv(stencil, x, weights)
    expected = reference_kmap(
        lambda w: np.asarray(func(jnp.asarray(w), weights)),
        np.asarray(x),
        3,
        padding="same",
    )
    np.testing.assert_allclose(jax.jit(stencil)(x, weights), expected, atol=1e-5)


@jax.custom_jvp
def _linear_without_derivative(window):
    return jnp.sum(window * jnp.arange(1.0, window.size + 1).reshape(window.shape))


@_linear_without_derivative.defjvp
def _zero_jvp(primals, tangents):
    return _linear_without_derivative(*primals), jnp.zeros(())


def test_custom_derivative_rules_keep_the_slice_lowering(every_size):
    """A linear function with a custom rule is not transposed into weights:
    its rule (here: zero derivative) must survive."""
    stencil = es.kmap(_linear_without_derivative, kernel_size=(16, 8))
    x = _x((20, 12))
    assert not has_conv(stencil, x)
    grad = jax.grad(lambda x: jnp.sum(stencil(x)))(x)
    np.testing.assert_array_equal(grad, np.zeros_like(x))


def test_accumulates_in_the_output_dtype(every_size):
    """bf16 windows with an f32 `preferred_element_type` accumulate in f32,
    as the function asks."""
    weights = _x((3, 3), seed=1)

    def dot(window, weights):
        return jnp.tensordot(
            window, weights.astype(jnp.bfloat16), 2, preferred_element_type=jnp.float32
        )

    stencil = es.kmap(dot, kernel_size=(3, 3), padding="same")
    x = _x((16, 16)).astype(jnp.bfloat16)
    assert has_conv(stencil, x, weights)
    out = stencil(x, weights)
    assert out.dtype == jnp.float32
    windows = np.asarray(x.astype(jnp.float32))
    expected = reference_kmap(
        lambda w: np.sum(w * np.asarray(weights.astype(jnp.bfloat16), np.float32)),
        windows,
        kernel_size=(3, 3),
        padding="same",
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
