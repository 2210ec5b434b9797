"""Composition with JAX / Equinox transforms, gradients, and immutability."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from reference import reference_kmap, relative_func

import eqx_stencil as es


def _x(shape, seed=0):
    """A NumPy input: no eager `jax.random` program per shape."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def laplacian(w):
    return w[1, 0] + w[-1, 0] + w[0, 1] + w[0, -1] - 4 * w[0, 0]


def _hand_laplacian_wrap(u):
    """Hand-written periodic Laplacian."""
    return (
        jnp.roll(u, -1, 0)
        + jnp.roll(u, 1, 0)
        + jnp.roll(u, -1, 1)
        + jnp.roll(u, 1, 1)
        - 4 * u
    )


def _hand_laplacian_wrap_np(u):
    """The same periodic Laplacian in NumPy."""
    return (
        np.roll(u, -1, 0) + np.roll(u, 1, 0) + np.roll(u, -1, 1) + np.roll(u, 1, 1)
        - 4 * u
    )  # fmt: skip


# --------------------------------------------------------------------------
# jit / vmap.


def test_jit_matches_eager_and_reference():
    stencil = es.kmap(
        laplacian, kernel_size=3, padding="same", relative=True, boundary="wrap"
    )
    x = _x((6, 7))
    expected = reference_kmap(
        relative_func(laplacian), np.asarray(x), 3, padding="same", boundary="wrap"
    )
    np.testing.assert_allclose(jax.jit(stencil)(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        jax.jit(lambda a: stencil(a))(x), expected, rtol=1e-5, atol=1e-5
    )
    eager = stencil(x)
    np.testing.assert_allclose(eager, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(eager, _hand_laplacian_wrap_np(x), atol=1e-5)


@pytest.mark.parametrize(
    "func, np_func",
    [
        (lambda w: w[0, 0] * w[1, 2], lambda w: w[0, 0] * w[1, 2]),
        (lambda w: jnp.sum(w**2), lambda w: np.sum(w**2)),
        (lambda w: w, lambda w: w),
    ],
)
def test_vmap_over_a_batch_of_inputs(func, np_func):
    kwargs = dict(kernel_size=(2, 3), strides=(1, 2), padding=1, boundary="reflect")
    stencil = es.kmap(func, **kwargs)
    xs = _x((3, 5, 6))
    # Both batchings traced separately, compiled as one program.
    outs = jax.jit(lambda xs: (jax.vmap(stencil)(xs), eqx.filter_vmap(stencil)(xs)))(xs)
    expected = np.stack([reference_kmap(np_func, np.asarray(x), **kwargs) for x in xs])
    for out in outs:
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_vmap_over_extra_argument():
    stencil = es.kmap(lambda w, c: c * w[0] + w[1], kernel_size=2)
    x = jnp.arange(5.0)
    cs = jnp.array([0.0, 1.0, -2.0])
    out = jax.vmap(stencil, in_axes=(None, 0))(x, cs)
    expected = np.stack(
        [reference_kmap(lambda w, c=c: c * w[0] + w[1], np.arange(5.0), 2) for c in cs]
    )
    np.testing.assert_allclose(out, expected)


def _walls(interior, edge):
    """`interior` inside, `edge` on the four walls (each its own region)."""
    stencil = es.kmap(kernel_size=(3, 3), padding="same", relative=True)
    stencil = stencil.at[1:-1, 1:-1].set(interior)
    every = slice(None)
    for wall in ((0, every), (-1, every), (every, 0), (every, -1)):
        stencil = stencil.at[wall].set(edge)
    return stencil


REGION_CASES = {
    # Tiles of every batching: the interior reads the input, the walls are
    # constant (unbatched updates written into a batched grid) ...
    "constant walls": (lambda u: u[0, 0] + 0.1 * laplacian(u), lambda u: 0.0),
    # ... and the other way round (batched walls into an unbatched grid).
    "constant interior": (lambda u: 1.0, lambda u: u[0, 0] * u[0, 1]),
    "both read": (lambda u: jnp.sin(laplacian(u)), lambda u: u[0, 0] ** 2),
    "bool": (lambda u: u[0, 0] > u[1, 0], lambda u: jnp.zeros((), bool)),
}


@pytest.mark.parametrize("name", list(REGION_CASES))
def test_vmap_over_a_multi_region_stencil(name):
    """A batch of a stencil whose tiles are assembled (`_assemble.py`), in any
    axis and nested, equals the examples one by one, as do its gradients
    (mapped and of the mapped)."""
    stencil = _walls(*REGION_CASES[name])
    xs = _x((3, 2, 7, 6))
    each = np.stack([[stencil(x) for x in row] for row in xs])
    nested = jax.jit(jax.vmap(jax.vmap(stencil)))(xs)
    np.testing.assert_array_equal(nested, each)
    moved = jax.jit(jax.vmap(stencil, in_axes=1, out_axes=1))(xs[0].swapaxes(0, 1))
    np.testing.assert_array_equal(moved, each[0].swapaxes(0, 1))
    if name == "bool":
        return

    def loss(x):
        return jnp.sum(jnp.cos(stencil(x)))

    expected = np.stack([jax.grad(loss)(x) for x in xs[0]])
    of_mapped = jax.grad(lambda xs: jnp.sum(jax.vmap(loss)(xs)))(xs[0])
    mapped = jax.jit(jax.vmap(jax.grad(loss)))(xs[0])
    for found in (of_mapped, mapped):
        np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# Gradients against the input and against extra arguments.


def test_grad_wrt_input_matches_hand_written():
    stencil = es.kmap(
        laplacian, kernel_size=3, padding="same", relative=True, boundary="wrap"
    )
    x = _x((5, 6))
    g = _x((5, 6), seed=1)

    def loss(fn):
        return lambda a: jnp.sum(jnp.sin(fn(a)) * g)

    # Both gradients in one program.
    actual, expected = jax.jit(
        lambda a: (
            jax.grad(loss(stencil))(a),
            jax.grad(loss(_hand_laplacian_wrap))(a),
        )
    )(x)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def _weighted_sum_grad_reference(x, g, kernel, **kwargs):
    """d/dw sum_o g[o] * sum(window_o * w) = sum_o g[o] * window_o."""
    patches = reference_kmap(lambda w: w, np.asarray(x), kernel, **kwargs)
    axes = tuple(range(np.ndim(g)))
    return np.tensordot(np.asarray(g), patches, axes=(axes, axes))


@pytest.mark.parametrize(
    "boundary",
    [
        "constant",
        # other fills: breadth of the rule "constant" checks (tests_thorough)
        pytest.param("wrap", marks=pytest.mark.thorough),
        pytest.param("symmetric", marks=pytest.mark.thorough),
    ],
)
def test_grad_wrt_positional_and_keyword_weights(boundary):
    kwargs = dict(padding="same", strides=(2, 1), boundary=boundary, cval=1.5)
    stencil = es.kmap(lambda win, w: jnp.sum(win * w), kernel_size=(3, 2), **kwargs)
    stencil_kw = es.kmap(
        lambda win, *, w: jnp.sum(win * w), kernel_size=(3, 2), **kwargs
    )
    x = _x((5, 4))
    w = _x((3, 2), seed=1)
    g = _x((3, 4), seed=2)
    expected = _weighted_sum_grad_reference(x, g, (3, 2), **kwargs)
    # Both gradients in one program.
    grad_pos, grad_kw = jax.jit(
        lambda w: (
            jax.grad(lambda w: jnp.sum(stencil(x, w) * g))(w),
            jax.grad(lambda w: jnp.sum(stencil_kw(x, w=w) * g))(w),
        )
    )(w)
    np.testing.assert_allclose(grad_pos, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_kw, expected, rtol=1e-5, atol=1e-5)


def test_grad_wrt_tap_coefficients():
    """Shift lowering with an extra argument: d/dc of c0*w[0] + c1*w[2]."""
    stencil = es.kmap(
        lambda win, c: c[0] * win[0] + c[1] * win[2],
        kernel_size=3,
        padding=1,
        boundary="edge",
    )
    x = _x((7,))
    g = _x((7,), seed=1)
    c = np.array([0.5, -1.0], np.float32)
    # And the keyword form: both gradients in one program.
    stencil_kw = es.kmap(
        lambda win, *, c: c[0] * win[0] + c[1] * win[2],
        kernel_size=3,
        padding=1,
        boundary="edge",
    )
    grad, grad_kw = jax.jit(
        lambda c: (
            jax.grad(lambda c: jnp.sum(stencil(x, c) * g))(c),
            jax.grad(lambda c: jnp.sum(stencil_kw(x, c=c) * g))(c),
        )
    )(c)
    patches = reference_kmap(lambda w: w, np.asarray(x), 3, padding=1, boundary="edge")
    expected = [np.sum(g * patches[:, 0]), np.sum(g * patches[:, 2])]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_kw, expected, rtol=1e-5, atol=1e-5)


GRAD_CASES = [
    # (func, kernel_size, kwargs, order): second order for one shift-lowered and
    # one window-lowered case, first order elsewhere (second order is slow).
    (
        lambda w: w[0, 0] * w[1, 1] - jnp.cos(w[0, 1]),
        (2, 2),
        dict(padding=((1, 2), (2, 1)), boundary="wrap", strides=(2, 1)),
        2,
    ),
    (
        lambda w: jnp.sum(jnp.tanh(w) * jnp.arange(w.size).reshape(w.shape)),
        (3, 2),
        dict(padding="same", boundary="reflect", strides=2),
        2,
    ),
    (
        lambda w: jnp.sin(w[0, 0]) * w[1, 2] + w[-1, 1] ** 2,
        (2, 3),
        dict(padding="same", boundary="constant", cval=0.5),
        1,
    ),
    (
        lambda w: w[0, 0] * w[-1, -1],
        (3, 3),
        dict(padding=2, boundary="reflect", dilation=(1, 2)),
        1,
    ),
    (
        lambda w: jnp.sum(w**2) * w[0, 0],
        (2, 3),
        dict(padding=((-1, 1), 1), boundary="edge"),
        1,
    ),
    (
        lambda w: jnp.sum(jnp.cos(w)) * jnp.mean(w),
        (3, 3),
        dict(padding="same", boundary="symmetric", strides=(1, 2)),
        1,
    ),
    (
        lambda w: jnp.sum(jnp.exp(w) * w),
        (2, 2),
        dict(padding=((0, 3), (2, 1)), boundary="wrap", strides=(2, 3)),
        1,
    ),
]


# The fast suite checks cases 0, 1 and 2 at first order together, in one
# program (test_check_grads_first_order), and every case at
# second order (~14 compilations of a program of many tiles: 10 to 20 s
# each) on 1D inputs in test_check_grads_second_order_shift_lowering and
# test_check_grads_wrt_weights (the window lowering): padding, boundary
# fills, strides and tiles are linear in the input, so their second
# derivatives are their first ones'; the second order of the function on the
# windows is the rule. The 2D cases at second order run in tests_thorough.
# A dilated reflect case (3), edge and symmetric fills (4, 5) and a second
# wrap case (6) are breadth of the fills' first order that cases 0 (wrap),
# 1 (reflect) and 2 (constant) check (tests_thorough).
def _grad_params():
    params = []
    for number, (func, kernel_size, kwargs, order) in enumerate(GRAD_CASES):
        if number in (3, 4, 5, 6):
            params.append(
                pytest.param(func, kernel_size, kwargs, 1, marks=pytest.mark.thorough)
            )
        if order == 2:
            params.append(
                pytest.param(func, kernel_size, kwargs, 2, marks=pytest.mark.thorough)
            )
    return params


@pytest.mark.parametrize("func, kernel_size, kwargs, order", _grad_params())
def test_check_grads(func, kernel_size, kwargs, order):
    stencil = es.kmap(func, kernel_size=kernel_size, **kwargs)
    x = _x((4, 5))
    check_grads(jax.jit(stencil), (x,), order=order, modes=["fwd", "rev"], atol=1e-2)


def test_check_grads_first_order():
    """Cases 0 (wrap), 1 (reflect) and 2 (constant) at first order, as the
    outputs of one program: one compilation per derivative instead of three."""
    stencils = [
        es.kmap(func, kernel_size=kernel_size, **kwargs)
        for func, kernel_size, kwargs, _ in GRAD_CASES[:3]
    ]
    # In float64: the three outputs' finite differences add up in the checked
    # projection, and float32 rounding alone would reach the tolerance.
    with jax.enable_x64(True):
        x = _x((4, 5)).astype(np.float64)
        check_grads(
            jax.jit(lambda a: tuple(stencil(a) for stencil in stencils)),
            (x,),
            order=1,
            modes=["fwd", "rev"],
            atol=1e-2,
        )


def test_check_grads_second_order_shift_lowering():
    """The shift lowering (taps), strided, on a 1D input."""
    stencil = es.kmap(lambda w: w[0] * w[2] - jnp.cos(w[1]), kernel_size=3, strides=2)
    x = _x((7,))
    check_grads(jax.jit(stencil), (x,), order=2, modes=["fwd", "rev"], atol=1e-2)


@pytest.mark.parametrize(
    "kwargs, wrt_input",
    [
        # the fill is constant in the weights and linear in the input: valid
        # padding is the rule; the window lowering (the whole window) with
        # respect to the input and the weights together, strided
        (dict(strides=2), True),
        # the original wrap case, weights only: breadth (tests_thorough)
        pytest.param(
            dict(boundary="wrap", padding="same"), False, marks=pytest.mark.thorough
        ),
    ],
    ids=["valid", "wrap"],
)
def test_check_grads_wrt_weights(kwargs, wrt_input):
    stencil = es.kmap(
        lambda win, w: jnp.sum(jnp.tanh(win * w) * jnp.arange(1.0, 4.0)),
        kernel_size=3,
        **kwargs,
    )
    x = _x((7,))
    w = _x((3,), seed=1)
    if wrt_input:
        function, args = jax.jit(stencil), (x, w)
    else:
        function, args = jax.jit(lambda w: stencil(x, w)), (w,)
    check_grads(function, args, order=2, modes=["fwd", "rev"], atol=1e-2)


# --------------------------------------------------------------------------
# Equinox transforms and modules.


def test_filter_jit_with_stencil_as_argument():
    @eqx.filter_jit
    def apply(stencil, x):
        return stencil(x)

    x = _x((8,))
    kwargs = dict(kernel_size=3, padding="same", boundary="reflect")
    first = es.kmap(lambda w: w[0] - w[2], **kwargs)
    second = es.kmap(jnp.max, **kwargs)
    third = es.kmap(lambda w: w[0] - w[2], kernel_size=3)  # other geometry
    xn = np.asarray(x)
    np.testing.assert_allclose(
        apply(first, x), reference_kmap(lambda w: w[0] - w[2], xn, **kwargs), atol=1e-6
    )
    np.testing.assert_allclose(apply(second, x), reference_kmap(np.max, xn, **kwargs))
    np.testing.assert_allclose(
        apply(third, x), reference_kmap(lambda w: w[0] - w[2], xn, 3), atol=1e-6
    )


class Weighted(eqx.Module):
    weight: jax.Array

    def __call__(self, w):
        return jnp.sum(w * self.weight)


class TapWeights(eqx.Module):
    coeffs: jax.Array

    def __call__(self, w):
        return self.coeffs[0] * w[0, 0] + self.coeffs[1] * w[1, -1]


def test_filter_grad_into_module_function_window_lowering():
    kwargs = dict(padding="same", boundary="wrap")
    stencil = es.kmap(Weighted(_x((3, 3), seed=1)), kernel_size=(3, 3), **kwargs)
    x = _x((5, 6))
    g = _x((5, 6), seed=2)

    @eqx.filter_grad
    def grads(stencil, x):
        return jnp.sum(stencil(x) * g)

    # Under filter_jit: one program instead of one per primitive.
    out = eqx.filter_jit(grads)(stencil, x)
    assert isinstance(out, es.Stencil)
    expected = _weighted_sum_grad_reference(x, g, (3, 3), **kwargs)
    np.testing.assert_allclose(out.func.weight, expected, rtol=1e-5, atol=1e-5)


def test_filter_grad_into_module_function_shift_lowering():
    kwargs = dict(padding="same", boundary="edge")
    stencil = es.kmap(
        TapWeights(np.array([2.0, -1.0], np.float32)), kernel_size=(2, 3), **kwargs
    )
    x = _x((4, 5))
    g = _x((4, 5), seed=2)
    out = eqx.filter_jit(eqx.filter_grad(lambda s: jnp.sum(s(x) * g)))(stencil)
    patches = reference_kmap(lambda w: w, np.asarray(x), (2, 3), **kwargs)
    expected = [
        np.sum(np.asarray(g) * patches[..., 0, 0]),
        np.sum(np.asarray(g) * patches[..., 1, -1]),
    ]
    np.testing.assert_allclose(out.func.coeffs, expected, rtol=1e-5, atol=1e-5)


def test_filter_vmap_over_stencils():
    """A batch of module functions (stacked weights) mapped with filter_vmap."""
    weights = _x((4, 3), seed=3)
    stencils = eqx.filter_vmap(
        lambda w: es.kmap(Weighted(w), kernel_size=3, padding="valid")
    )(weights)
    x = _x((6,))
    out = eqx.filter_vmap(lambda s: s(x))(stencils)
    expected = np.stack(
        [
            reference_kmap(lambda win, w=w: np.sum(win * w), np.asarray(x), 3)
            for w in np.asarray(weights)
        ]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_stencil_is_an_equinox_module():
    stencil = es.kmap(lambda w: w[0], kernel_size=3)
    assert isinstance(stencil, eqx.Module)
    assert isinstance(stencil, es.Stencil)
    # A module func holding an array is part of the pytree.
    leaves = jax.tree_util.tree_leaves(es.kmap(Weighted(jnp.ones(3)), kernel_size=3))
    assert any(isinstance(leaf, jax.Array) and leaf.shape == (3,) for leaf in leaves)


# --------------------------------------------------------------------------
# Immutability and the decorator form.


@pytest.mark.parametrize(
    "func",
    [
        laplacian,
        # a second function (a weighted window sum): breadth (tests_thorough)
        pytest.param(
            lambda w: jnp.sum(w * jnp.arange(9.0).reshape(3, 3)),
            marks=pytest.mark.thorough,
        ),
    ],
    ids=["laplacian", "weighted"],
)
def test_calling_twice_and_under_two_traces_gives_identical_results(func):
    stencil = es.kmap(func, kernel_size=3, padding="same", boundary="symmetric")
    before = jax.tree_util.tree_structure(stencil), stencil.kernel_size
    x = _x((4, 4))
    first = stencil(x)
    second = stencil(x)
    # Two jit traces and a gradient's, compiled as one program.
    traced_a, traced_b, grads = jax.jit(
        lambda a, s=stencil: (
            jax.jit(lambda b: s(b))(a),
            jax.jit(lambda b: 2 * s(b))(a),
            jax.grad(lambda b: jnp.sum(s(b)))(a),
        )
    )(x)
    third = stencil(x)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, third)
    np.testing.assert_allclose(first, traced_a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(2 * first, traced_b, rtol=1e-6, atol=1e-6)
    assert grads.shape == x.shape
    assert (jax.tree_util.tree_structure(stencil), stencil.kernel_size) == before


def test_decorator_form_returns_new_stencil_and_keeps_original():
    base = es.kmap(kernel_size=3, padding="same", boundary="edge")
    assert base.func is None

    def f(w):
        return w[2] - w[0]

    derived = base(f)
    assert isinstance(derived, es.Stencil)
    assert derived is not base
    assert derived.func is f
    assert base.func is None
    assert (derived.kernel_size, derived.padding, derived.boundary) == (
        base.kernel_size,
        base.padding,
        base.boundary,
    )
    x = _x((6,))
    expected = reference_kmap(f, np.asarray(x), 3, padding="same", boundary="edge")
    np.testing.assert_allclose(derived(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="no function"):
        base(x)
    # A second decoration is independent of the first.
    other = base(jnp.max)
    np.testing.assert_allclose(
        other(x), reference_kmap(np.max, np.asarray(x), 3, padding="same",
                                 boundary="edge")
    )  # fmt: skip
    np.testing.assert_allclose(derived(x), expected, atol=1e-6)


# --------------------------------------------------------------------------
# Constant outputs broadcast to the output shape.


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(kernel_size=3, padding="same"), (5, 4)),
        (dict(kernel_size=(2, 3), strides=2), (5, 4)),
        (dict(kernel_size=-1), (5, 4)),
    ],
)
def test_constant_function_broadcasts(kwargs, shape):
    x = _x(shape)
    expected_shape = reference_kmap(lambda w: 0.0, np.asarray(x), **kwargs).shape
    out = es.kmap(lambda w: 1.0, **kwargs)(x)
    assert out.shape == expected_shape
    np.testing.assert_array_equal(out, np.ones(expected_shape))
    out_jit = jax.jit(es.kmap(lambda w: 1.0, **kwargs))(x)
    np.testing.assert_array_equal(out_jit, np.ones(expected_shape))
    vec = es.kmap(lambda w: jnp.array([1.0, 2.0]), **kwargs)(x)
    np.testing.assert_array_equal(
        vec, np.broadcast_to([1.0, 2.0], expected_shape + (2,))
    )
    arg = es.kmap(lambda w, c: c, **kwargs)(x, jnp.float32(3.0))
    np.testing.assert_array_equal(arg, np.full(expected_shape, 3.0))
