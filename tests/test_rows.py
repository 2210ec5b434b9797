"""The row lowering (`eqx_stencil/_rows.py`) against the NumPy reference and
against the tiled lowering: values, gradients, and the rule that picks it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import check_grads_in_one_program
from hypothesis import given, settings, strategies as st
from reference import reference_kmap, relative_func

import eqx_stencil as es
import eqx_stencil._lower as lower


MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


@contextlib.contextmanager
def row_calls() -> Iterator[list[tuple[int, int]]]:
    """The row ranges the row lowering computes within this context."""
    calls: list[tuple[int, int]] = []
    original = lower.row_planes
    with pytest.MonkeyPatch.context() as patch:

        def spy(problem, taps, rows):
            calls.append(rows)
            return original(problem, taps, rows)

        patch.setattr(lower, "row_planes", spy)
        yield calls


@contextlib.contextmanager
def tiled() -> Iterator[None]:
    """The tiled lowering only (the row lowering never applies)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lower, "row_range", lambda problem, taps: None)
        yield


@st.composite
def row_configs(draw):
    """A geometry the row lowering applies to: stride 1, and after dim 0 an
    output of the input's extent (`lo + hi` = the dilated kernel's extent
    less one, `lo` possibly negative); along dim 0 any padding that fits;
    any boundary mode."""
    rank = draw(st.integers(2, 3))
    shape, kernel, dilation, padding = [], [], [], []
    for dim in range(rank):
        k = draw(st.integers(1, 4))
        d = draw(st.integers(1, 2))
        span = d * (k - 1)
        if dim == 0:
            lo, hi = draw(st.integers(-1, 3)), draw(st.integers(-1, 3))
            n = draw(st.integers(max(1, span + 1 - lo - hi), 9))
        else:
            lo = draw(st.integers(-1, span + 1))
            hi = span - lo
            n = draw(st.integers(1, 7))
        shape.append(n)
        kernel.append(k)
        dilation.append(d)
        padding.append((lo, hi))
    taps = draw(
        st.lists(
            st.tuples(*(st.integers(0, k - 1) for k in kernel)),
            min_size=1,
            max_size=5,
            unique=True,
        )
    )
    weights = [draw(st.sampled_from([1.0, -2.0, 0.5, 3.0])) for _ in taps]
    return dict(
        shape=tuple(shape),
        kwargs=dict(
            kernel_size=tuple(kernel),
            padding=tuple(padding),
            dilation=tuple(dilation),
            boundary=draw(st.sampled_from(MODES)),
            cval=draw(st.sampled_from([0.0, 1.5, -2.0])),
        ),
        taps=tuple(taps),
        weights=tuple(weights),
        nonlinear=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _function(config):
    """A weighted sum of the drawn taps (absolute indices), the first term
    through `sin` when `nonlinear`: for `kmap` and for the reference."""
    taps, weights, nonlinear = config["taps"], config["weights"], config["nonlinear"]

    def make(sin):
        def func(w):
            terms = [weight * w[tap] for tap, weight in zip(taps, weights)]
            if nonlinear:
                terms[0] = sin(terms[0])
            return sum(terms[1:], terms[0])

        return func

    return make(jnp.sin), make(np.sin)


def _input(config):
    rng = np.random.default_rng(config["seed"])
    return rng.normal(size=config["shape"]).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(config=row_configs())
def test_rows_match_reference_and_tiles(config):
    jax_func, numpy_func = _function(config)
    x = _input(config)
    stencil = es.kmap(jax_func, **config["kwargs"])
    expected = reference_kmap(numpy_func, x, **config["kwargs"])
    with row_calls() as calls:
        rows = jax.jit(stencil)(x)
    with tiled():
        tiles = jax.jit(es.kmap(jax_func, **config["kwargs"]))(x)
    np.testing.assert_allclose(np.asarray(rows), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(rows), np.asarray(tiles), rtol=1e-6, atol=1e-6
    )
    # The rule (`row_range`) decides; where it declines, the tiles ran.
    assert len(calls) <= 1
    if calls:
        (a, b), out_rows = calls[0], expected.shape[0]
        assert 0 <= a < b <= out_rows


@settings(max_examples=12, deadline=None)
@given(config=row_configs())
def test_row_gradients_match_tiles(config):
    jax_func, _ = _function(config)
    x = _input(config)

    def loss(u):
        return jnp.sum(jnp.cos(es.kmap(jax_func, **config["kwargs"])(u)))

    with row_calls():
        rows = jax.jit(jax.grad(loss))(x)
    with tiled():
        tiles = jax.jit(jax.grad(loss))(x)
    np.testing.assert_allclose(
        np.asarray(rows), np.asarray(tiles), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((9, 8), dict(kernel_size=3, padding="same")),
        ((5, 4, 6), dict(kernel_size=3, padding="same", dilation=(1, 2, 1))),
        ((7, 6), dict(kernel_size=(2, 3), padding=((0, 1), (2, 0)), cval=0.5)),
    ],
)
def test_row_lowering_check_grads(shape, kwargs):
    """Values and first-order derivatives (both modes) of a nonlinear
    function of every tap, by finite differences."""
    x = np.random.default_rng(0).normal(size=shape)
    first, last, one = ((i,) * len(shape) for i in (0, -1, 1))
    stencil = es.kmap(lambda w: jnp.tanh(w[first]) * w[last] + w[one], **kwargs)
    with row_calls() as calls:
        out = stencil(x)
        check_grads_in_one_program(
            stencil, (x,), out, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2
        )
    assert calls


def _laplacian(u):
    return u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]


@pytest.mark.parametrize(
    "shape, kwargs, rows",
    [
        # Applies: the rows whose windows stay inside along dim 0.
        ((8, 8), dict(), (1, 7)),
        ((8, 8), dict(cval=2.0), (1, 7)),
        ((8, 8), dict(padding=((0, 0), (1, 1))), (0, 6)),
        ((6, 5, 4), dict(kernel_size=3), (1, 5)),
        # A kernel wider than a later dim: rows whose slices would leave the
        # flat input are left to the padded bands.
        ((6, 2), dict(kernel_size=(3, 5)), (2, 4)),
        # Any boundary mode: the padding's value read by another slice.
        ((8, 8), dict(boundary="wrap"), (1, 7)),
        ((8, 8), dict(boundary="edge"), (1, 7)),
        ((8, 8), dict(boundary="reflect", dilation=(1, 2)), (1, 7)),
        ((5, 4, 6), dict(kernel_size=3, boundary="symmetric"), (1, 4)),
        # Two positions padded alike along dim 1 (one select for both); the
        # first and last inner rows would read 2 elements outside the field.
        ((8, 9), dict(kernel_size=(3, 5)), (2, 6)),
        ((8, 9), dict(kernel_size=(3, 5), boundary="wrap"), (2, 6)),
        # Does not apply.
        ((8, 8), dict(strides=(1, 2)), None),
        ((8, 8), dict(strides=(2, 1)), None),
        ((8, 8), dict(padding=((1, 1), (0, 0))), None),  # narrower output
        ((8,), dict(kernel_size=3), None),  # one dim
    ],
)
def test_the_rule_picks_rows(shape, kwargs, rows):
    """`row_range`: where the row lowering applies and which rows it reads;
    the values agree with the reference either way."""
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    ndim = len(shape)
    geometry = dict(kernel_size=3, padding="same", relative=True) | kwargs
    if ndim == 1:
        func = lambda u: u[1] - 2 * u[0] + u[-1]  # noqa: E731
    elif ndim == 3:
        func = lambda u: u[1, 0, 0] + u[0, -1, 0] - u[0, 0, 1]  # noqa: E731
    elif geometry["kernel_size"] == (3, 5):
        func = lambda u: u[1, 2] + u[-1, -2] - u[0, 0]  # noqa: E731
    else:
        func = _laplacian
    with row_calls() as calls:
        out = jax.jit(es.kmap(func, **geometry))(x)
    assert calls == ([] if rows is None else [rows])
    relative = {k: v for k, v in geometry.items() if k != "relative"}
    expected = reference_kmap(relative_func(func), x, **relative)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64])
def test_row_lowering_keeps_dtypes(dtype):
    """The boundary's constant is selected in the field's dtype."""
    rng = np.random.default_rng(2)
    x = rng.integers(0, 2, size=(6, 7)).astype(dtype)
    if dtype == np.bool_:
        func = lambda u: u[0, 1] | u[1, 0]  # noqa: E731
        cval = True
    else:
        func = _laplacian
        cval = 1
    stencil = es.kmap(func, kernel_size=3, padding="same", relative=True, cval=cval)
    with row_calls() as calls:
        out = jax.jit(stencil)(x)
    assert calls
    expected = reference_kmap(
        relative_func(func), x, kernel_size=3, padding="same", cval=cval
    )
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_multiple_fields_and_arguments():
    """Two fields and a traced coefficient, differentiated through."""
    rng = np.random.default_rng(3)
    u, v = (rng.normal(size=(7, 9)).astype(np.float32) for _ in range(2))

    def func(f, c):
        return c * f["u"][0, 1] - f["v"][1, -1] * f["u"][0, 0]

    stencil = es.kmap(func, kernel_size=3, padding="same", relative=True)

    def loss(c):
        return jnp.sum(stencil({"u": u, "v": v}, c) ** 2)

    with row_calls() as calls:
        value, grad = jax.jit(jax.value_and_grad(loss))(0.7)
    assert calls
    with tiled():
        value_t, grad_t = jax.jit(jax.value_and_grad(loss))(0.7)
    np.testing.assert_allclose(value, value_t, rtol=1e-6)
    np.testing.assert_allclose(grad, grad_t, rtol=1e-5)


@pytest.mark.parametrize(
    "func, leaves",
    [
        (lambda w: 3.0, [lambda w: 3.0]),
        (lambda w: jnp.stack([w[0, 0], w[2, 1]]), [lambda w: [w[0, 0], w[2, 1]]]),
        (lambda w: (w[1, 2], -w[0, 1]), [lambda w: w[1, 2], lambda w: -w[0, 1]]),
    ],
    ids=["no taps", "vector", "tuple"],
)
def test_row_outputs_of_any_structure(func, leaves):
    """A function of no tap, with a per-position vector, or a tuple: shapes
    `out_shape + S`, leaf by leaf (`leaves`: each leaf's NumPy function)."""
    x = np.random.default_rng(4).normal(size=(6, 5)).astype(np.float32)
    geometry = dict(kernel_size=3, padding="same", cval=0.5)
    with row_calls() as calls:
        out = jax.jit(es.kmap(func, **geometry))(x)
    assert calls
    assert len(jax.tree.leaves(out)) == len(leaves)
    for leaf, numpy_leaf in zip(jax.tree.leaves(out), leaves):
        expected = reference_kmap(numpy_leaf, x, **geometry)
        np.testing.assert_allclose(np.asarray(leaf), expected, rtol=1e-6)


WINDOW_FUNCTIONS = {
    # unrolled: a reduction of the planes
    "max": (lambda w: jnp.max(w), lambda w: np.max(w)),
    "nonlinear sum": (
        lambda w: jnp.sum(jnp.tanh(w) * jnp.arange(w.size).reshape(w.shape)),
        lambda w: np.sum(np.tanh(w) * np.arange(w.size).reshape(w.shape)),
    ),
    # the window itself (patches)
    "patches": (lambda w: w, lambda w: w),
    # no plane rule for sort: `vmap` over the window stacks
    "median": (
        lambda w: jnp.sort(w.reshape(-1))[w.size // 2],
        lambda w: np.sort(w.reshape(-1))[w.size // 2],
    ),
}


@settings(max_examples=20, deadline=None)
@given(config=row_configs(), name=st.sampled_from(sorted(WINDOW_FUNCTIONS)))
def test_window_functions_by_rows(config, name):
    """Whole-window functions (the unrolled and `vmap` window lowerings) by
    the row lowering: values against NumPy and the tiles, and gradients
    against the tiles."""
    jax_func, numpy_func = WINDOW_FUNCTIONS[name]
    x = _input(config)
    kwargs = config["kwargs"]
    expected = reference_kmap(numpy_func, x, **kwargs)

    def loss(u, stencil):
        return jnp.sum(jnp.cos(stencil(u)))

    with row_calls() as calls:
        stencil = es.kmap(jax_func, **kwargs)
        rows = jax.jit(stencil)(x)
        rows_grad = jax.jit(jax.grad(loss), static_argnums=1)(x, stencil)
    with tiled():
        stencil = es.kmap(jax_func, **kwargs)
        tiles = jax.jit(stencil)(x)
        tiles_grad = jax.jit(jax.grad(loss), static_argnums=1)(x, stencil)
    np.testing.assert_allclose(np.asarray(rows), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(rows), np.asarray(tiles), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(rows_grad), np.asarray(tiles_grad), rtol=1e-5, atol=1e-5
    )
    assert len(calls) <= 2  # the value's and the gradient's trace


def test_game_of_life_by_rows():
    """Bools, a periodic board and a whole-window count: the row lowering."""
    board = np.random.default_rng(5).random((9, 11)) < 0.4

    def life(w):
        alive = jnp.sum(w) - w[1, 1]
        return (alive == 3) | (w[1, 1] & (alive == 2))

    def numpy_life(w):
        alive = np.sum(w) - w[1, 1]
        return (alive == 3) | (w[1, 1] & (alive == 2))

    stencil = es.kmap(life, kernel_size=3, padding="same", boundary="wrap")
    with row_calls() as calls:
        out = jax.jit(stencil)(board)
    assert calls
    expected = reference_kmap(
        numpy_life, board.astype(np.int32), 3, padding="same", boundary="wrap"
    )
    np.testing.assert_array_equal(np.asarray(out), expected)
