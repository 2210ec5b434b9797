"""Linear window functions lowered to a convolution (`_conv_lowering.py`).

Every case checks that the convolution is really emitted (or not), and
compares values with the NumPy loop over windows and gradients with the
slice lowering and with finite differences.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from jax.test_util import check_grads
from lowerings import FORMS, recorded_forms
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


def forms_of(fn, *args) -> list[str]:
    """The lowerings `fn(*args)` traces (`[]`: the slices)."""
    with recorded_forms() as used:
        jax.make_jaxpr(fn)(*args)
    return used


def run_lowered(fn, *args) -> tuple[list[str], Any]:
    """The lowerings `fn(*args)` traces (`forms_of`), and its value compiled
    from that same trace (`forms_of` and then `jax.jit(fn)` would trace it
    twice)."""
    with recorded_forms() as used:
        traced = jax.jit(fn).trace(*args)
    return used, traced.lower().compile()(*args)


@pytest.fixture(params=list(FORMS))
def every_size(request):
    """Each of this module's lowerings, for any number of taps."""
    with conv_lowering.forced_lowering(request.param):
        yield request.param


def slices_only(fn):
    """`fn` traced with the slice lowerings."""

    def run(*args):
        with conv_lowering.forced_lowering("slices"):
            return fn(*args)

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
    forms, out = run_lowered(stencil, x, weights)
    assert forms == [every_size]
    reference_args = {k: v for k, v in geometry.items()}
    expected = reference_kmap(
        lambda w: np.sum(w * np.asarray(weights)), np.asarray(x), **reference_args
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_whole_dim_becomes_channels_at_the_default_threshold():
    x, weights = _x((16, 9, 10)), _x((16, 3, 3), 1)
    stencil = es.kmap(correlate, kernel_size=(-1, 3, 3), padding=(0, 1, 1))
    forms, out = run_lowered(stencil, x, weights)
    assert forms == ["contraction"]  # 16 channels into one output
    expected = reference_kmap(
        lambda w: np.sum(w * np.asarray(weights)),
        np.asarray(x),
        (16, 3, 3),
        padding=(0, 1, 1),
    )
    np.testing.assert_allclose(out, expected, atol=1e-4)


def _into(outputs: int):
    """A linear function of a `(C, 3, 3)` window into `outputs` entries."""

    def func(window, weights):
        return jnp.tensordot(weights[:outputs], window, 3)

    return func


# The planes of one output entry's contraction below: 9 taps of the padded
# (11, 12) image, float32.
PLANE_BYTES = 4 * 9 * 11 * 12


@pytest.mark.parametrize(
    "channels, outputs, max_planes, backends, expected",
    [
        (4, 1, None, {"cpu"}, ["contraction"]),  # MIN_CONTRACTED channels
        (3, 1, None, {"cpu"}, []),  # 27 taps: the slices
        (16, 7, None, {"cpu"}, ["contraction"]),
        (16, 8, None, {"cpu"}, ["convolution"]),  # VECTOR_OUTPUTS
        (64, 8, None, {"cpu"}, ["convolution"]),  # ... however many channels
        (16, 5, 5 * PLANE_BYTES, {"cpu"}, ["contraction"]),  # MAX_PLANES_BYTES
        (16, 5, 5 * PLANE_BYTES - 1, {"cpu"}, ["convolution"]),
        (4, 4, 0, {"cpu"}, ["contraction"]),  # FEW_OUTPUTS: any planes
        (16, 1, None, set(), ["convolution"]),  # a backend not measured
        (8, 1, None, set(), []),  # ... and too few taps for its convolution
    ],
)
def test_the_rule_picks_by_channels_outputs_planes_and_taps(
    monkeypatch, channels, outputs, max_planes, backends, expected
):
    monkeypatch.setattr(conv_lowering, "CONTRACT_FIRST_BACKENDS", frozenset(backends))
    if max_planes is not None:
        monkeypatch.setattr(conv_lowering, "MAX_PLANES_BYTES", max_planes)
    x, weights = _x((channels, 9, 10)), _x((8, channels, 3, 3), 1)
    stencil = es.kmap(_into(outputs), kernel_size=(-1, 3, 3), padding=(0, 1, 1))
    assert forms_of(stencil, x, weights) == expected


def test_contraction_under_vmap_and_grad():
    """A batch `vmap` of a stencil that contracts (8 channels into 2
    outputs): values against NumPy's loop, gradients against the
    convolution's (the slices' gradient compiles for 25 s here)."""
    xs, k = _x((3, 8, 6, 7)), _x((2, 8, 3, 3), 1)
    stencil = es.kmap(_into(2), kernel_size=(-1, 3, 3), padding=(0, 1, 1))
    batched = jax.vmap(stencil, in_axes=(0, None))
    forms, out = run_lowered(batched, xs, k)
    assert forms == ["contraction"]
    expected = [
        reference_kmap(
            lambda w: np.tensordot(k[:2], w, 3), x, (8, 3, 3), padding=(0, 1, 1)
        )
        for x in xs
    ]
    np.testing.assert_allclose(out, np.stack(expected), rtol=1e-4, atol=1e-4)

    def loss(xs, k):
        return jnp.sum(jnp.sin(batched(xs, k)))

    @jax.jit  # the contraction's gradients and the convolution's: one program
    def both(xs, k):
        grad = jax.grad(loss, argnums=(0, 1))
        contracted = grad(xs, k)
        with conv_lowering.forced_lowering("convolution"):
            return contracted, grad(xs, k)

    found, expected_grads = both(xs, k)
    for a, b in zip(found, expected_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_single_field_taps_threshold():
    """One field has one channel: `MIN_CONV_TAPS` taps make a convolution."""
    x = _x((20, 20))
    assert forms_of(es.kmap(correlate, kernel_size=(12, 12)), x, _x((12, 12))) == [
        "convolution"
    ]
    assert forms_of(es.kmap(correlate, kernel_size=(11, 13)), x, _x((11, 13))) == []


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
    forms, (vector, scalar) = run_lowered(stencil, fields, kernels)
    assert forms == [every_size]
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
    forms, out = run_lowered(stencil, x, weights)
    assert forms == []
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
    assert forms_of(stencil, x) == []
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
    assert forms_of(stencil, x, weights) == [every_size]
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


def _run(case: Case) -> tuple[list[str], jax.Array, tuple[jax.Array, jax.Array]]:
    """The lowerings the stencil traces (`FORMS`), its value and the
    gradients of a loss of it."""
    stencil = _stencil(case)

    def loss(x, k):
        return jnp.sum(jnp.sin(stencil(x, k)))

    args = (case.x, case.weights)  # NumPy: `jnp.asarray` compiles per new shape
    forms, value = run_lowered(stencil, *args)
    return forms, value, jax.jit(jax.grad(loss, argnums=(0, 1)))(*args)


def _run_vmap_lowering(
    case: Case,
) -> tuple[list[str], jax.Array, tuple[jax.Array, jax.Array]]:
    """`_run` by the `vmap` lowering, value and gradients in ONE compiled
    program (its taps' slices and their transposes compile slowly under
    -O0)."""
    with (
        pytest.MonkeyPatch.context() as patch,
        conv_lowering.forced_lowering("slices"),
    ):
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

        forms, (value, grads) = run_lowered(value_and_grads, case.x, case.weights)
    return forms, value, grads


def _check_against_numpy_and_vmap(case: Case, lowering: str | None = None) -> None:
    """`case` by `lowering` (the rule's choice if `None`) against NumPy's
    loop over windows and the `vmap` lowering."""
    with (
        contextlib.nullcontext()
        if lowering is None
        else conv_lowering.forced_lowering(lowering)
    ):
        forms, value, grads = _run(case)
    # One function everywhere: one contraction, its padding folded in; with
    # a region, one per tile.
    assert len(forms) == 1 if case.region is None else len(forms) >= 1, forms
    assert lowering is None or set(forms) == {lowering}, forms
    # The rule reads the whole input: every tile (interior, one-window-wide
    # strips, the region's) takes the same lowering.
    assert len(set(forms)) == 1, forms
    ref_forms, ref_value, ref_grads = _run_vmap_lowering(case)
    assert ref_forms == []
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


# Any number of taps (1 to 10 channels instead of 16 to 146), the
# lowering drawn: the same checks, and a `vmap` reference (one slice per tap)
# that compiles ~10x faster than at 144 taps. The rule's choice at its
# default thresholds is
# test_linear_functions_match_numpy_and_vmap_at_the_default_threshold
# (tests_thorough) and, fast, test_the_rule_picks_by_channels_per_output_and_taps.
FEW_TAPS = 8


@settings(max_examples=20, deadline=None)
@given(case=cases(FEW_TAPS), lowering=st.sampled_from(list(FORMS)))
def test_linear_functions_match_numpy_and_vmap(case, lowering):
    _check_against_numpy_and_vmap(case, lowering)


@pytest.mark.thorough
@settings(max_examples=20, deadline=None)
@given(case=cases(conv_lowering.MIN_CONV_TAPS))
def test_linear_functions_match_numpy_and_vmap_at_the_default_threshold(case):
    _check_against_numpy_and_vmap(case)
