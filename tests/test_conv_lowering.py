"""Linear window functions lowered to a convolution (`_conv_lowering.py`).

Every case checks that the convolution is really emitted (or not), and
compares values with the NumPy loop over windows and gradients with the
slice lowering and with finite differences.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from jax.test_util import check_grads
from reference import MODES, fits, reference_kmap
from region_reference import reference_regions

import eqx_stencil as es
import eqx_stencil._conv_lowering as conv_lowering
from eqx_stencil import _lower


def _x(shape, seed=0):
    """Standard normal float32 input drawn with NumPy, kept a NumPy array (an
    eager `jax.random` draw, and even `jnp.asarray`, compiles a program per new
    shape; jitted functions take NumPy arrays as they are)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def has_conv(fn, *args) -> bool:
    """Whether `fn(*args)` traces to a `conv_general_dilated`."""
    return "conv_general_dilated" in str(jax.make_jaxpr(fn)(*args))


def run_with_conv(fn, *args) -> tuple[bool, Any]:
    """Whether `fn(*args)` traces to a `conv_general_dilated` (`has_conv`), and
    its value compiled from that same trace (`has_conv` and then `jax.jit(fn)`
    would trace it twice)."""
    traced = jax.jit(fn).trace(*args)
    return "conv_general_dilated" in str(traced.jaxpr), traced.lower().compile()(*args)


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
    conv, out = run_with_conv(stencil, x, weights)
    assert conv
    reference_args = {k: v for k, v in geometry.items()}
    expected = reference_kmap(
        lambda w: np.sum(w * np.asarray(weights)), np.asarray(x), **reference_args
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_whole_dim_becomes_channels_at_the_default_threshold():
    x, weights = _x((16, 9, 10)), _x((16, 3, 3), 1)
    stencil = es.kmap(correlate, kernel_size=(-1, 3, 3), padding=(0, 1, 1))
    conv, out = run_with_conv(stencil, x, weights)
    assert conv
    expected = reference_kmap(
        lambda w: np.sum(w * np.asarray(weights)),
        np.asarray(x),
        (16, 3, 3),
        padding=(0, 1, 1),
    )
    np.testing.assert_allclose(out, expected, atol=1e-4)
    few = es.kmap(correlate, kernel_size=(-1, 3, 3), padding=(0, 1, 1))
    assert not has_conv(few, x[:3], weights[:3])  # 27 taps: slices


@pytest.mark.parametrize(
    "geometry",
    [
        GEOMETRIES[0],  # zero fill: the convolution's own padding
        # [1] (zero fill, strides, dilation, uneven padding) only in
        # tests_thorough: strided and dilated gradients against finite
        # differences are [3]'s, and against the vmap lowering for random
        # geometries and paddings test_linear_functions_match_numpy_and_vmap's.
        pytest.param(GEOMETRIES[1], marks=pytest.mark.thorough),
        # Another fill, padded once before the convolution: edge here; wrap
        # (the same path, another mode) only in tests_thorough.
        pytest.param(GEOMETRIES[2], marks=pytest.mark.thorough),
        GEOMETRIES[3],
    ],
)
def test_gradients_equal_slice_lowering_and_finite_differences(every_size, geometry):
    x = _x((7, 8))
    weights = _x(geometry["kernel_size"], 1)
    stencil = es.kmap(correlate, **geometry)

    def loss(x, weights):
        return jnp.sum(jnp.sin(jnp.asarray(stencil(x, weights))))

    @jax.jit  # the convolution's gradients and the slices': one program
    def both(x, weights):
        grad = jax.grad(loss, argnums=(0, 1))
        return grad(x, weights), slices_only(grad)(x, weights)

    found, expected = both(x, weights)
    for a, b in zip(found, expected):
        np.testing.assert_allclose(a, b, atol=1e-5)
    check_grads(jax.jit(loss), (x, weights), order=1, modes=("fwd", "rev"), atol=1e-2)


def test_multiple_fields_and_vector_outputs(every_size):
    fields = {"u": _x((8, 9)), "v": _x((8, 9), 2)}
    kernels = _x((4, 2, 3, 3), 3)  # 4 outputs, 2 fields

    def func(w, k):
        stacked = jnp.stack([w["u"], w["v"]])
        return jnp.tensordot(k, stacked, axes=3), jnp.einsum("ij,ij->", w["u"], k[0, 1])

    stencil = es.kmap(func, kernel_size=3, padding="same", boundary="reflect")
    conv, (vector, scalar) = run_with_conv(stencil, fields, kernels)
    assert conv
    # Both outputs against NumPy's windows (the slice lowering's program, a
    # second reference, compiled in 1 s).
    u, v = np.asarray(fields["u"]), np.asarray(fields["v"])
    k = np.asarray(kernels)
    ref_u = reference_kmap(lambda w: w, u, 3, padding="same", boundary="reflect")
    ref_v = reference_kmap(lambda w: w, v, 3, padding="same", boundary="reflect")
    np.testing.assert_allclose(
        vector,
        np.einsum("ofij,xyfij->xyo", k, np.stack([ref_u, ref_v], axis=2)),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        scalar, np.einsum("xyij,ij->xy", ref_u, k[0, 1]), rtol=1e-5, atol=1e-5
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
    conv, out = run_with_conv(stencil, x, weights)
    assert not conv
    expected = reference_kmap(
        lambda w: np.asarray(func(jnp.asarray(w), weights)),
        np.asarray(x),
        3,
        padding="same",
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)


@jax.custom_jvp
def _linear_without_derivative(window):
    return jnp.sum(window * jnp.arange(1.0, window.size + 1).reshape(window.shape))


@_linear_without_derivative.defjvp
def _zero_jvp(primals, tangents):
    return _linear_without_derivative(*primals), jnp.zeros(())


def test_custom_derivative_rules_keep_the_slice_lowering(every_size):
    """A linear function with a custom rule is not transposed into weights:
    its rule (here: zero derivative) must survive."""
    stencil = es.kmap(_linear_without_derivative, kernel_size=(4, 3))
    x = _x((6, 5))
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


# Differential test: random linear window functions of at least MIN_CONV_TAPS
# taps, against the NumPy loop and the `vmap` lowering.


class Linear(NamedTuple):
    """A function linear in its window `w` with weights `k` (shape `(2, *kernel)`),
    and its NumPy counterpart."""

    text: str
    jax_fn: Callable
    np_fn: Callable


LINEAR = [
    Linear("sum", lambda w, k: jnp.sum(w * k[0]), lambda w, k: np.sum(w * k[0])),
    Linear(
        "tensordot",
        lambda w, k: jnp.tensordot(k, w, w.ndim),
        lambda w, k: np.tensordot(k, w, w.ndim),
    ),
    Linear(
        "dot",
        lambda w, k: jnp.dot(k[1].reshape(-1), jnp.reshape(w, -1)) / 2,
        lambda w, k: np.dot(k[1].reshape(-1), w.reshape(-1)) / 2,
    ),
    Linear(
        "einsum",
        lambda w, k: jnp.einsum("i...,i...->i", w, k[0] - k[1]),
        lambda w, k: np.sum(w * (k[0] - k[1]), axis=(1, 2)),
    ),
    Linear(
        "taps",  # weighted taps and a flipped window
        lambda w, k: 3.0 * w[(0,) * w.ndim] - jnp.sum(jnp.flip(w, 0) * k[1]),
        lambda w, k: 3.0 * w[(0,) * w.ndim] - np.sum(np.flip(w, 0) * k[1]),
    ),
]

SPATIAL_PADDING = st.one_of(
    st.integers(0, 2),
    st.sampled_from(["same", "valid"]),
    st.tuples(st.integers(-1, 2), st.integers(-1, 2)),
)


class Case(NamedTuple):
    x: np.ndarray
    weights: np.ndarray
    geometry: dict
    func: Linear
    region: Any  # an index, or None for one function everywhere


@st.composite
def cases(draw, min_taps: int) -> Case:
    """A `(C, n1, n2)` input whose window covers the channels whole, with
    `C * k1 * k2 >= min_taps` (the convolution's threshold), any geometry,
    boundary and region."""
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(2))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(2))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(2))
    padding = tuple(draw(SPATIAL_PADDING) for _ in range(2))
    spatial = tuple(
        draw(st.integers(max(1, d * (k - 1)), d * (k - 1) + 5))
        for k, d in zip(kernel, dilation)
    )
    channels = -(-min_taps // math.prod(kernel))
    channels += draw(st.integers(0, 2))
    geometry = dict(
        kernel_size=(channels, *kernel),
        strides=(1, *strides),
        padding=((0, 0), *padding),
        dilation=(1, *dilation),
    )
    shape = (channels, *spatial)
    assume(fits(shape, **geometry))
    boundary = draw(st.sampled_from(MODES))
    geometry["boundary"] = boundary
    if boundary == "constant":
        geometry["cval"] = draw(st.sampled_from([0.0, 1.5]))
    # A second function on the last output columns: the tile path (one
    # convolution per tile). Its `vmap` reference once met an XLA:CPU
    # miscompile (docs/known-issues.md, tests/test_xla_workarounds.py).
    region = draw(st.sampled_from([None, (..., slice(1, None))]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    weights = rng.standard_normal((2, channels, *kernel)).astype(np.float32)
    return Case(x, weights, geometry, draw(st.sampled_from(LINEAR)), region)


def _stencil(case: Case) -> es.Stencil:
    stencil = es.kmap(lambda w, k: case.func.jax_fn(w, k), **case.geometry)
    if case.region is not None:  # a second linear function on a region
        stencil = stencil.at[case.region].set(lambda w, k: case.func.jax_fn(w, -2 * k))
    return stencil


def _run(case: Case) -> tuple[int, jax.Array, tuple[jax.Array, jax.Array]]:
    """How many convolutions the stencil's compiled program runs, its value
    and the gradients of a loss of it."""
    stencil = _stencil(case)

    def loss(x, k):
        return jnp.sum(jnp.sin(stencil(x, k)))

    args = (case.x, case.weights)  # NumPy: `jnp.asarray` compiles per new shape
    compiled = jax.jit(stencil).lower(*args).compile()
    count = str(compiled.as_text()).count(" convolution(")
    return count, compiled(*args), jax.jit(jax.grad(loss, argnums=(0, 1)))(*args)


def _run_vmap_lowering(
    case: Case,
) -> tuple[int, jax.Array, tuple[jax.Array, jax.Array]]:
    """`_run` by the `vmap` lowering, value and gradients in ONE compiled
    program (its taps' slices and their transposes compile slowly under
    -O0), and the convolutions that program runs (value and gradients)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv_lowering, "MIN_CONV_TAPS", 10**9)
        patch.setattr(_lower, "MAX_UNROLLED_TAPS", -1)
        stencil = _stencil(case)

        def value_and_grads(x, k):
            def loss(x, k):
                value = stencil(x, k)
                return jnp.sum(jnp.sin(value)), value

            (_, value), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
                x, k
            )
            return value, grads

        args = (case.x, case.weights)
        compiled = jax.jit(value_and_grads).lower(*args).compile()
    count = str(compiled.as_text()).count(" convolution(")
    return count, *compiled(*args)


def _check_against_numpy_and_vmap(case: Case) -> None:
    count, value, grads = _run(case)
    # One function everywhere: one convolution, its padding folded in; with
    # a region, one per tile.
    assert count == 1 if case.region is None else count >= 1, count
    ref_count, ref_value, ref_grads = _run_vmap_lowering(case)
    assert ref_count == 0
    k = case.weights
    regions = (
        []
        if case.region is None
        else [(case.region, lambda w: case.func.np_fn(w, -2 * k))]
    )
    expected = reference_regions(
        lambda w: case.func.np_fn(w, k), regions, case.x, **case.geometry
    )
    text = f"{case.func.text} {case.geometry} region={case.region}"
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4, err_msg=text)
    np.testing.assert_allclose(value, ref_value, rtol=1e-4, atol=1e-4, err_msg=text)
    # Finite differences of the convolution's gradient: the fixed geometries
    # of test_gradients_equal_slice_lowering_and_finite_differences.
    for grad, ref_grad in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-4, err_msg=text)


# The threshold lowered to 8 taps: 1 to 10 channels instead of 16 to 146,
# the same lowerings and checks, and a `vmap` reference (one slice per tap)
# that compiles ~10x faster (~20% faster again than at 16 taps). The default
# threshold (144 taps) is
# test_linear_functions_match_numpy_and_vmap_at_the_default_threshold
# (tests_thorough) and, for the lowering's choice, the fast
# test_whole_dim_becomes_channels_at_the_default_threshold.
FEW_TAPS = 8


@settings(max_examples=20, deadline=None)
@given(case=cases(FEW_TAPS))
def test_linear_functions_match_numpy_and_vmap(case):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv_lowering, "MIN_CONV_TAPS", FEW_TAPS)
        _check_against_numpy_and_vmap(case)


@pytest.mark.thorough
@settings(max_examples=20, deadline=None)
@given(case=cases(conv_lowering.MIN_CONV_TAPS))
def test_linear_functions_match_numpy_and_vmap_at_the_default_threshold(case):
    _check_against_numpy_and_vmap(case)
