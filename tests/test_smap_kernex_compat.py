"""`es.smap` against a NumPy reference, and the `eqx_stencil.kernex` namespace."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from reference import reference_kmap

import eqx_stencil as es
import eqx_stencil.kernex as kernex


def reference_smap(func, x, kernel_size, strides, offset, relative=False):
    """Windows anchored at every position ('same' padding, zeros); the function
    runs inside the offset box every `strides`, the rest keep the input."""
    ndim = x.ndim
    windows = reference_kmap(lambda w: w, x, kernel_size, padding="same")
    out = np.array(x, dtype=np.result_type(x, np.float32))
    offsets = [o if isinstance(o, tuple) else (o, o) for o in offset]
    steps = strides if isinstance(strides, tuple) else (strides,) * ndim
    ranges = [range(lo, n - hi, s) for (lo, hi), n, s in zip(offsets, x.shape, steps)]
    anchors = tuple((k - 1) // 2 for k in kernel_size)
    shift = anchors if relative else (0,) * ndim
    for position in np.ndindex(*x.shape):
        if all(p in r for p, r in zip(position, ranges)):
            out[position] = func(
                lambda *key, w=windows[position]: w[tuple(np.add(key, shift))]
            )
    return out


@st.composite
def smap_configs(draw):
    ndim = draw(st.integers(1, 2))
    shape = tuple(draw(st.integers(1, 7)) for _ in range(ndim))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    offset = tuple(
        (draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(ndim)
    )
    strides = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    relative = draw(st.booleans())
    low = [-((k - 1) // 2) if relative else 0 for k in kernel]
    taps = [
        tuple(draw(st.integers(lo, lo + k - 1)) for lo, k in zip(low, kernel))
        for _ in range(2)
    ]
    return shape, kernel, offset, strides, relative, taps


@settings(max_examples=30, deadline=None)
@given(config=smap_configs(), seed=st.integers(0, 2**16))
def test_smap_matches_reference(config, seed):
    shape, kernel, offset, strides, relative, taps = config
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)

    def func(get):
        return 2.0 * get(*taps[0]) - get(*taps[1]) ** 2

    stencil = es.smap(
        lambda w: func(lambda *key: w[key]),
        kernel_size=kernel,
        strides=strides,
        offset=offset,
        relative=relative,
    )
    actual = jax.jit(stencil)(x)
    expected = reference_smap(func, x, kernel, strides, offset, relative)
    assert actual.shape == x.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_smap_kernex_docstring_example():
    F = es.smap(lambda x: x[0] + x[1], kernel_size=2, relative=True, offset=((2, 0),))
    np.testing.assert_array_equal(F(jnp.arange(1, 6)), [1, 2, 7, 9, 5])


def test_smap_with_regions_keeps_input_outside_offset():
    x = jnp.arange(1.0, 9.0)
    F = (
        es.smap(lambda w: w[0] * 10, kernel_size=1, offset=1)
        .at[:4]
        .set(lambda w: -w[0])
    )
    np.testing.assert_array_equal(F(x), [1, -2, -3, -4, 50, 60, 70, 8])


def test_smap_offset_wider_than_array_leaves_input_unchanged():
    """`n - hi < 0` is an empty box, not a slice counted from the end."""
    x = jnp.array([[0.5], [-0.25]])
    F = es.smap(lambda w: 2 * w[0, 0], kernel_size=(1, 1), offset=((0, 3), (0, 0)))
    G = es.smap(lambda w: 2 * w[0], kernel_size=1, offset=((1, 4),))
    f, g = jax.jit(lambda x, y: (F(x), G(y)))(x, np.arange(1.0, 4.0))  # one compile
    np.testing.assert_array_equal(f, x)
    np.testing.assert_array_equal(g, [1, 2, 3])


def test_smap_offset_errors():
    with pytest.raises(ValueError, match="offset"):
        es.smap(lambda w: w[0], offset=-1)
    with pytest.raises(ValueError, match="offset"):
        es.smap(lambda w: w[0], kernel_size=(1, 1), offset=(1, 1, 1))(jnp.ones((3, 3)))


def test_kernex_function_mesh_readme_example():
    """The seed README's mesh, called twice (kernex 0.2.1 returns x**2 everywhere
    on the second call), and its gradient."""
    F = kernex.kmap(kernel_size=(1,))
    F[0] = lambda x: x[0] ** 2
    F[1:] = lambda x: x[0] ** 3
    array = jnp.arange(1, 11).astype("float32")
    expected = np.arange(1, 11, dtype=np.float32) ** 3
    for _ in range(2):
        np.testing.assert_allclose(F(array), expected)
    grad = jax.grad(lambda x: jnp.sum(F(x)))(array)
    np.testing.assert_allclose(grad, [2, 12, 27, 48, 75, 108, 147, 192, 243, 300])


def test_kernex_uncovered_position_takes_first_function():
    F = kernex.kmap(kernel_size=(1,))
    F[2:4] = lambda x: -x[0]
    F[3:] = lambda x: 10 * x[0]
    np.testing.assert_array_equal(F(jnp.arange(6.0)), [0, -1, -2, 30, 40, 50])


def test_kernex_function_assigned_twice_keeps_first_place():
    """kernex orders regions by a function's first assignment."""
    f, g = (lambda x: x[0] + 100), (lambda x: -x[0])
    F = kernex.kmap(kernel_size=(1,))
    F[:3] = f
    F[1:] = g
    F[2] = f  # f's regions come before g's: g still wins at 2
    np.testing.assert_array_equal(F(jnp.arange(4.0)), [100, -1, -2, -3])


def test_kernex_readme_kmap_examples_with_only_the_import_changed():
    @kernex.kmap(kernel_size=(3, 3), padding="valid", relative=True)
    def laplacian(x):
        return (
            0 * x[1, -1] + 1 * x[1, 0] + 0 * x[1, 1]
            + 1 * x[0, -1] + -4 * x[0, 0] + 1 * x[0, 1]
            + 0 * x[-1, -1] + 1 * x[-1, 0] + 0 * x[-1, 1]
        )  # fmt: skip

    np.testing.assert_array_equal(laplacian(jnp.ones([10, 10])), np.zeros((8, 8)))

    @jax.jit
    @kernex.kmap(kernel_size=(3, 3), padding="same")
    def get_3x3_patches(x):
        return x

    mat = jnp.arange(1, 26).reshape(5, 5)
    np.testing.assert_array_equal(
        get_3x3_patches(mat)[0, 0], [[0, 0, 0], [0, 1, 2], [0, 6, 7]]
    )

    @kernex.kmap(kernel_size=(3,))
    def moving_average(x):
        return jnp.mean(x)

    np.testing.assert_allclose(
        moving_average(jnp.array([1, 2, 3, 7, 9])), [2.0, 4.0, 6.3333335]
    )

    maxpool = jax.vmap(
        jax.vmap(kernex.kmap(kernel_size=(2, 2), strides=2, padding="same")(jnp.max))
    )
    np.testing.assert_array_equal(
        maxpool(jnp.arange(1, 26).reshape(1, 1, 5, 5))[0, 0],
        [[7, 9, 10], [17, 19, 20], [22, 24, 25]],
    )


@pytest.mark.parametrize("map_kind", ["vmap", "lmap", "pmap"])
def test_kernex_map_kind_gives_the_same_result(map_kind):
    F = kernex.kmap(kernel_size=3, padding="same", map_kind=map_kind, map_kwargs={})
    x = jnp.arange(7.0)
    np.testing.assert_allclose(
        F(lambda w: jnp.sum(w * jnp.array([1.0, 2.0, 3.0])))(x),
        reference_kmap(
            lambda w: np.sum(w * [1.0, 2.0, 3.0]), np.arange(7.0), 3, padding="same"
        ),
    )


def test_kernex_bad_map_kind():
    with pytest.raises(ValueError, match="map_kind"):
        kernex.kmap(kernel_size=3, map_kind="xmap")


def test_kernex_mesh_under_filter_jit():
    F = kernex.kmap(kernel_size=(3,), padding="same", relative=True)
    F[1:-1] = lambda x: x[-1] - 2 * x[0] + x[1]
    F[0] = F[-1] = lambda x: x[0]
    stencil = F.stencil
    x = jnp.linspace(0.0, 1.0, 9) ** 2
    out = eqx.filter_jit(lambda s, x: s(x))(stencil, x)
    expected = np.asarray(x).copy()
    expected[1:-1] = np.asarray(x[:-2] - 2 * x[1:-1] + x[2:])
    np.testing.assert_allclose(out, expected, atol=1e-6)


# --------------------------------------------------------------------------
# Extra arguments: positional, keyword, pytrees and Modules, with regions and
# under vmap, against the reference (the function closing over the values).


class Scale(eqx.Module):
    factor: jax.Array


@settings(max_examples=25, deadline=None)
@given(config=smap_configs(), seed=st.integers(0, 2**16))
def test_smap_with_extra_arguments_matches_reference(config, seed):
    shape, kernel, offset, strides, relative, taps = config
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)

    def func(get, k, c, scale):
        return k * get(*taps[0]) - c["b"] * get(*taps[1]) * scale.factor

    stencil = es.smap(
        lambda w, k, c, *, scale: func(lambda *key: w[key], k, c, scale),
        kernel_size=kernel,
        strides=strides,
        offset=offset,
        relative=relative,
    )
    c, scale = {"b": jnp.float32(0.5)}, Scale(jnp.float32(3.0))
    actual = stencil(x, 2.0, c, scale=scale)
    expected = reference_smap(
        lambda get: func(get, 2.0, {"b": 0.5}, Scale(3.0)),  # pyright: ignore
        x, kernel, strides, offset, relative,
    )  # fmt: skip
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_smap_issue_repro_and_arguments_with_regions_under_vmap():
    x = jnp.array([1.0, 2, 3, 4])
    F = es.smap(lambda u, k: k * u[0], kernel_size=3, offset=1, relative=True)
    G = F.at[2].set(lambda u, k: -k * u[1])
    f, g, batched, grad = jax.jit(  # one program: one compile
        lambda x, k, ks: (
            F(x, k),
            G(x, k=k),
            jax.vmap(G, in_axes=(None, 0))(x, ks),
            jax.grad(lambda k: jnp.sum(G(x, k)))(k),
        )
    )(x, 2.0, jnp.array([1.0, 3.0]))
    np.testing.assert_array_equal(f, [1, 4, 6, 4])
    np.testing.assert_array_equal(g, [1, 4, -8, 4])
    np.testing.assert_array_equal(batched, [[1, 2, -4, 4], [1, 6, -12, 4]])
    np.testing.assert_allclose(grad, 2.0 - 4.0)


def test_kernex_smap_mesh_with_arguments():
    F = kernex.smap(kernel_size=(3,), relative=True, offset=1)
    F[1] = lambda u, k: k * u[-1]
    F[2:] = lambda u, k: k * u[1]
    np.testing.assert_array_equal(F(jnp.arange(1.0, 6.0), 10.0), [1, 10, 40, 50, 5])
