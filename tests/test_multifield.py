"""Multi-field stencils: the input is a pytree of same-shape arrays, the
function receives the same pytree of windows and may return a pytree.

The reference extracts every field's windows with `reference_kmap` (identity
function) and calls the function on the pytree of NumPy windows position by
position, so every geometry rule is the one the single-field tests trust.
"""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from jax.test_util import check_grads
from reference import MODES, fits, geometry, pad_array, reference_kmap
from region_reference import owner_map

import eqx_stencil as es


def reference_fields(func, fields, owners=None, funcs=(), **geometry_kwargs):
    """`func` (or `funcs[owner]` where `owners` is given) on the pytree of
    windows at every output position; the pytree of stacked results."""
    leaves, structure = jtu.tree_flatten(fields)
    patches = [reference_kmap(lambda w: w, leaf, **geometry_kwargs) for leaf in leaves]
    kernel_ndim = leaves[0].ndim
    out_shape = patches[0].shape[: patches[0].ndim - kernel_ndim]
    results = []
    for position in itertools.product(*(range(n) for n in out_shape)):
        windows = structure.unflatten([patch[position] for patch in patches])
        f = func if owners is None else funcs[owners[position]]
        results.append(jtu.tree_map(np.asarray, f(windows)))
    return jtu.tree_map(
        lambda *values: np.stack(values).reshape(out_shape + values[0].shape),
        *results,
    )


def mixing_function(taps, weights):
    """Tap-by-tap function of fields "a", "b", "c" returning two outputs (the
    shift lowering)."""

    def func(w):
        tanh = np.tanh if isinstance(w["a"], np.ndarray) else jnp.tanh
        first = sum(weight * w[f][t] for (f, t), weight in zip(taps, weights))
        second = w["a"][taps[0][1]] * w["c"][taps[-1][1]]
        return {
            "first": tanh(first + 0.5),
            "second": (second, 2.0 * w["b"][taps[0][1]]),
        }

    return func


def whole_window_function(w):
    """Whole-window use of every field (the unrolled window lowering)."""
    sum_, max_ = (
        (np.sum, np.max) if isinstance(w["a"], np.ndarray) else (jnp.sum, jnp.max)
    )
    return sum_(w["a"] * w["b"]) + max_(w["c"])


def sorting_function(w):
    """Uses `sort`, which has no plane rule: the `vmap` window lowering."""
    sort = np.sort if isinstance(w["a"], np.ndarray) else jnp.sort
    return sort((w["a"] + w["b"]).reshape(-1))[0] * w["c"].reshape(-1)[-1]


@st.composite
def field_configs(draw):
    ndim = draw(st.integers(1, 2))
    shape = tuple(draw(st.integers(1, 6)) for _ in range(ndim))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    padding = tuple(
        (draw(st.integers(-1, 2)), draw(st.integers(-1, 2))) for _ in range(ndim)
    )
    assume(fits(shape, kernel, strides, padding, dilation))
    every = list(itertools.product(*(range(k) for k in kernel)))
    taps = draw(
        st.lists(
            st.tuples(st.sampled_from("abc"), st.sampled_from(every)),
            min_size=1,
            max_size=4,
        )
    )
    weights = [draw(st.floats(-1, 1)) for _ in taps]
    return dict(
        shape=shape,
        geometry=dict(
            kernel_size=kernel,
            strides=strides,
            padding=padding,
            dilation=dilation,
            boundary=draw(st.sampled_from(MODES)),
        ),
        taps=taps,
        weights=weights,
    )


def random_fields(shape, seed):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name in "abc"}


@settings(max_examples=40, deadline=None)
@given(config=field_configs(), seed=st.integers(0, 2**16))
def test_multifield_kmap_matches_reference(config, seed):
    fields = random_fields(config["shape"], seed)
    funcs = (
        mixing_function(config["taps"], config["weights"]),
        whole_window_function,
        sorting_function,
    )
    # One compiled program for the three stencils (each its own lowering).
    stencils = [es.kmap(func, **config["geometry"]) for func in funcs]
    outputs = jax.jit(lambda fields: [stencil(fields) for stencil in stencils])(fields)
    for func, actual in zip(funcs, outputs):
        expected = reference_fields(func, fields, **config["geometry"])
        assert jtu.tree_structure(actual) == jtu.tree_structure(expected)
        for got, want in zip(jtu.tree_leaves(actual), jtu.tree_leaves(expected)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    config=field_configs(),
    seed=st.integers(0, 2**16),
    region=st.tuples(st.integers(-4, 4), st.integers(-4, 4) | st.none()),
)
def test_multifield_regions_match_reference(config, seed, region):
    fields = random_fields(config["shape"], seed)
    geometry_kwargs = config["geometry"]
    default = mixing_function(config["taps"], config["weights"])

    def boundary_function(w):
        out = default(w)
        return jtu.tree_map(lambda value: -value, out)

    index = (slice(*region),) * len(config["shape"])
    stencil = es.kmap(default, **geometry_kwargs).at[index].set(boundary_function)
    actual = stencil(fields)
    geo = {k: v for k, v in geometry_kwargs.items() if k != "boundary"}
    owners = owner_map(config["shape"], [index], True, **geo)
    expected = reference_fields(
        None,
        fields,
        owners=owners,
        funcs=(default, boundary_function),
        **geometry_kwargs,
    )
    for got, want in zip(jtu.tree_leaves(actual), jtu.tree_leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fields_as_tuple_and_module():
    class State(eqx.Module):
        u: jax.Array
        v: jax.Array

    rng = np.random.default_rng(0)
    u, v = (jnp.asarray(rng.normal(size=(5, 6)), jnp.float32) for _ in range(2))

    def rotate(w):
        return State(u=w.v[0, 1] - w.v[0, -1], v=w.u[1, 0] - w.u[-1, 0])

    F = es.kmap(rotate, kernel_size=(3, 3), padding="same", relative=True)
    out = F(State(u, v))
    assert isinstance(out, State)
    pu, pv = np.pad(u, 1), np.pad(v, 1)
    np.testing.assert_allclose(out.u, pv[1:-1, 2:] - pv[1:-1, :-2], rtol=1e-6)
    np.testing.assert_allclose(out.v, pu[2:, 1:-1] - pu[:-2, 1:-1], rtol=1e-6)

    G = es.kmap(lambda w: w[0][0, 0] * w[1][0, 0], kernel_size=(1, 1))
    np.testing.assert_allclose(G((u, v)), u * v, rtol=1e-6)


def test_fields_keep_their_dtypes():
    x = jnp.arange(6.0)
    n = jnp.arange(6)
    F = es.kmap(lambda w: (w[0][1] * 2, w[1][1] + 1), kernel_size=3, padding="same")
    real, integer = F((x, n))
    assert real.dtype == x.dtype and integer.dtype == n.dtype
    np.testing.assert_array_equal(integer, np.arange(6) + 1)


def test_multifield_smap_keeps_every_field_outside_offset():
    x, n = jnp.arange(1.0, 7.0), jnp.arange(10, 16)
    F = es.smap(
        lambda w: (w[0][-1] + w[1][1], w[1][0] * 0),
        kernel_size=3,
        relative=True,
        offset=((2, 1),),
    )
    real, integer = F((x, n))
    np.testing.assert_array_equal(real, [1, 2, 2 + 13, 3 + 14, 4 + 15, 6])
    np.testing.assert_array_equal(integer, [10, 11, 0, 0, 0, 15])


def reference_fields_kscan(func, fields, kernel_size, padding, boundary):
    """The sequential definition with every field written back."""
    leaves, structure = jtu.tree_flatten(fields)
    geo = geometry(leaves[0].shape, kernel_size, 1, padding, 1)
    work = [
        pad_array(np.asarray(leaf, np.float64), geo["pads"], boundary, 0)
        for leaf in leaves
    ]
    for position in itertools.product(*(range(n) for n in geo["out_shape"])):
        index = tuple(slice(o, o + k) for o, k in zip(position, geo["kernel"]))
        windows = structure.unflatten([w[index] for w in work])
        values = structure.flatten_up_to(func(windows))
        anchor = tuple(o + (k - 1) // 2 for o, k in zip(position, geo["kernel"]))
        for w, value in zip(work, values):
            w[anchor] = value
    anchors = tuple(
        slice((k - 1) // 2, (k - 1) // 2 + n)
        for k, n in zip(geo["kernel"], geo["out_shape"])
    )
    return structure.unflatten([w[anchors] for w in work])


@pytest.mark.parametrize(
    "reads",
    [
        ((0, 1), (2, 1)),  # earlier row only: one scan step per row
        ((1, 0), (0, 1)),  # left neighbour updated in this row: cell by cell
    ],
)
def test_multifield_kscan_matches_sequential_reference(reads):
    rng = np.random.default_rng(3)
    fields = (rng.normal(size=(5, 6)), rng.normal(size=(5, 6)))
    fields = tuple(f.astype(np.float32) for f in fields)
    (r0, r1) = reads

    def func(w):
        u, v = w
        return 0.5 * u[r0] + 0.3 * v[r1], u[1, 1] - 0.2 * v[r0]

    F = es.kscan(func, kernel_size=(3, 3), padding=1, boundary="edge")
    actual = jax.jit(F)(fields)
    expected = reference_fields_kscan(func, fields, (3, 3), 1, "edge")
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _gradients_case(padding):
    rng = np.random.default_rng(1)
    u, v = (jnp.asarray(rng.normal(size=(4, 5))) for _ in range(2))
    F = es.kmap(
        lambda w, c: (w[0][1, 0] * w[1][0, 1], c * jnp.sin(w[1][0, 0])),
        kernel_size=(3, 3),
        padding=padding,
        relative=True,
        boundary="reflect",
    )

    def loss(u, v, c):
        a, b = F((u, v), c)
        return jnp.sum(a**2) + jnp.sum(b)

    return loss, (u, v, 1.5)


def test_multifield_gradients():
    # First order (forward and reverse; both fields and the argument `c`) with
    # reflected strips on one side of each dim: an interior and two strips.
    # `test_multifield_second_order_gradients` (--thorough) checks both orders
    # with "same" (strips on both sides: five boxes).
    loss, args = _gradients_case(((1, 0), (0, 1)))
    check_grads(loss, args, order=1, modes=("fwd", "rev"), eps=1e-3)
    S = es.kscan(
        lambda w: (w[0][0] + w[1][-1], w[1][0] * w[0][-1]),
        kernel_size=3,
        padding=1,
        relative=True,
    )
    u, v, _ = args
    check_grads(lambda u, v: S((u, v))[1], (u[0], v[0]), order=1, modes=("fwd", "rev"))


@pytest.mark.thorough
def test_multifield_second_order_gradients():
    # Breadth: the fast suite checks first derivatives of a pytree of fields
    # (`test_multifield_gradients`; gathering the fields' windows and
    # assembling the tiles are linear, their second derivatives are their
    # first ones') and second derivatives of window functions
    # (tests/test_transforms.py::test_check_grads_second_order_shift_lowering,
    # test_check_grads_wrt_weights). This check compiles a dozen programs
    # (20 to 35 s on two cores).
    loss, args = _gradients_case("same")
    # float32 second differences: a step of 1e-3 keeps rounding (~1e-7 / eps)
    # well inside the tolerance, whatever order XLA sums in.
    check_grads(loss, args, order=2, modes=("fwd", "rev"), eps=1e-3)


def test_multifield_vmap_and_filter_jit():
    fields = {"a": jnp.ones((3, 4, 5)), "b": jnp.arange(60.0).reshape(3, 4, 5)}
    F = es.kmap(
        lambda w: w["a"][0, 0] + w["b"][0, 1],
        kernel_size=(1, 3),
        padding="same",
        relative=True,
    )
    batched = jax.vmap(F)(fields)
    expected = (
        1 + np.pad(np.arange(60.0).reshape(3, 4, 5), ((0, 0), (0, 0), (0, 1)))[..., 1:]
    )
    np.testing.assert_allclose(batched, expected)
    np.testing.assert_allclose(
        eqx.filter_jit(lambda s, f: s(f))(F, jtu.tree_map(lambda a: a[0], fields)),
        expected[0],
    )


def test_multifield_errors():
    F = es.kmap(lambda w: w[0][0] + w[1][0], kernel_size=1)
    with pytest.raises(ValueError, match=r"same shape.*\[0\]: \(3,\), \[1\]: \(4,\)"):
        F((jnp.ones(3), jnp.ones(4)))
    with pytest.raises(ValueError, match="holds no array"):
        F(())
    S = es.kscan(lambda w: w[0][0], kernel_size=1)
    with pytest.raises(ValueError, match="one scalar per window for each field"):
        S((jnp.ones(3), jnp.ones(3)))
