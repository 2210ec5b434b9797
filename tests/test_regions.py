"""Region tables, `stencil.at[index].set(func)`, against the NumPy reference.

docs/design.md, "The rules", Regions: an index (ints, negative ints, slices with any
step, `...`, tuples of these, or a static boolean mask of the input's shape)
selects output positions by the input coordinate of their window's anchor
(`o * stride + ((k - 1) // 2) * dilation - lo`); later `.at[...].set` calls
win; the default function covers the rest; a position in no region without a
default function is a `ValueError` naming it.
"""

from __future__ import annotations

import functools
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, event, given, settings, strategies as st
from jax import lax
from jax.test_util import check_grads
from reference import fits, reference_kmap, relative_func, resolve_kernel
from region_reference import NO_OWNER, owner_map, reference_regions, selection

import eqx_stencil as es


MODES = ("constant", "edge", "reflect", "symmetric", "wrap")
PAD_STRINGS = ("same", "valid", "SAME", "Valid")
EXAMPLES = 25


def _check(actual, expected, rtol=1e-5, atol=1e-5):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def _uncovered_position(message: str) -> tuple[int, ...]:
    """The output position an "covered by no region" error names."""
    found = re.search(r"\((\d+(?:, *\d+)*),?\)", message)
    assert found, f"the error names no position: {message!r}"
    return tuple(int(v) for v in found.group(1).split(","))


# --------------------------------------------------------------------------
# The reference itself, against hand-computed anchors (so it can be trusted).


def test_reference_selection_is_numpy_indexing():
    assert selection(-1, (4,)).tolist() == [False, False, False, True]
    assert selection(slice(None, None, -2), (5,)).tolist() == [1, 0, 1, 0, 1]
    assert selection((..., 0), (2, 3)).tolist() == [[1, 0, 0], [1, 0, 0]]
    assert selection(1, (2, 3)).tolist() == [[0, 0, 0], [1, 1, 1]]
    with pytest.raises(IndexError):
        selection(4, (4,))


ANCHOR_CASES = [
    # valid, k=3: the anchor of output o is input o + 1
    (dict(kernel_size=3), slice(1, 4), [0, 1, 2]),
    (dict(kernel_size=3), 0, []),
    (dict(kernel_size=3), -1, []),
    (dict(kernel_size=3), -2, [7]),
    # stride 2, "same" (1, 1): anchors 0, 2, 4, 6, 8
    (dict(kernel_size=3, strides=2, padding="same"), slice(2, 7), [1, 2, 3]),
    (dict(kernel_size=3, strides=2, padding="same"), slice(1, None, 2), []),
    (dict(kernel_size=3, strides=2, padding="same"), slice(None, None, -3), [0, 3]),
    # dilation 2, k=4: anchor o + 2
    (dict(kernel_size=4, dilation=2), 3, [1]),
    # negative padding crops: anchor o + 2
    (dict(kernel_size=1, padding=((-2, -3),)), 2, [0]),
    (dict(kernel_size=1, padding=((-2, -3),)), slice(-4, None), [4]),
    # padding wider than the window: anchors o - 2, in the padding at 0, 1
    (dict(kernel_size=1, padding=2), Ellipsis, list(range(2, 12))),
    # even kernel "same" pads (0, 1): anchor o
    (dict(kernel_size=2, padding="same"), slice(3, 5), [3, 4]),
]


@functools.cache
def _anchor_outputs():
    """Every ANCHOR_CASES stencil on `arange(10)`, computed in one program
    (one compile for all the cases of test_anchor_rule_by_hand)."""
    stencils = [
        es.kmap(lambda w: w[0] * 0 - 1.0, **geo).at[index].set(lambda w: w[0] * 0 + 1.0)
        for geo, index, _ in ANCHOR_CASES
    ]
    outs = jax.jit(lambda u: [stencil(u) for stencil in stencils])(np.arange(10.0))
    return [np.asarray(out) for out in outs]


@pytest.mark.parametrize("geo, index, owned", ANCHOR_CASES)
def test_anchor_rule_by_hand(geo, index, owned):
    x = np.arange(10.0)
    owners = owner_map(x.shape, [index], True, **geo)
    assert np.flatnonzero(owners == 1).tolist() == owned
    out = _anchor_outputs()[ANCHOR_CASES.index((geo, index, owned))]
    assert np.flatnonzero(out == 1).tolist() == owned
    assert np.all((out == 1) | (out == -1))


# --------------------------------------------------------------------------
# Functional update: `.at[...].set` returns a new stencil.


def test_at_set_returns_new_stencil_and_leaves_original_unchanged():
    x = np.arange(1.0, 11.0, dtype=np.float32)
    base = es.kmap(lambda w: jnp.sum(w), kernel_size=3, padding="same")
    setter = base.at[2:5]
    derived = setter.set(lambda w: -w[1])
    other = setter.set(lambda w: 100 * w[1])  # the setter can be reused
    again = derived.at[0].set(lambda w: w[2] * 0 + 7.0)
    assert derived is not base and isinstance(derived, es.Stencil)
    assert base.regions == () and len(derived.regions) == 1
    assert len(other.regions) == 1 and len(again.regions) == 2

    # All four stencils in one program, after every update: base still
    # computes the plain window sums, derived is unchanged by again.
    outs = jax.jit(lambda u: [s(u) for s in (base, derived, other, again)])(x)
    window_sums = np.convolve(np.arange(1.0, 11.0), np.ones(3), mode="same")
    np.testing.assert_array_equal(outs[0], window_sums)
    expected = window_sums.copy()
    expected[2:5] = -np.arange(3.0, 6.0)
    np.testing.assert_array_equal(outs[1], expected)
    np.testing.assert_array_equal(
        outs[2], np.where(expected < 0, -100 * expected, expected)
    )
    expected[0] = 7.0
    np.testing.assert_array_equal(outs[3], expected)


def test_decorator_default_with_regions():
    @es.kmap(kernel_size=(3,), padding="same", relative=True)
    def smooth(x):
        return (x[-1] + x[0] + x[1]) / 3

    edged = smooth.at[0].set(lambda x: x[0]).at[-1].set(lambda x: x[0])
    u = np.array([3.0, 0.0, 6.0, 9.0, 3.0], np.float32)
    both = jax.jit(lambda u: (edged(u), smooth(u)))(u)  # one program
    _check(both[0], np.array([3.0, 3.0, 5.0, 6.0, 3.0]))
    _check(both[1], np.array([1.0, 3.0, 5.0, 6.0, 4.0]))


# --------------------------------------------------------------------------
# Index forms, deterministic: rank 1 and 2, several geometries.


def _index_id(index):
    if isinstance(index, np.ndarray):
        return "mask" + "".join("1" if v else "0" for v in index.ravel()[:12])
    return repr(index)


def _breadth(index):
    """An index form whose rule a fast case of the same list checks: only in
    tests_thorough (test_random_region_tables draws more of each kind)."""
    return pytest.param(index, marks=pytest.mark.thorough, id=_index_id(index))


INDICES_1D = [
    _breadth(3),  # ints: -1 and -10 (the first input entry)
    -1,
    -10,
    _breadth(slice(2, None)),  # open slices: slice(-100, 100, 4)
    _breadth(slice(None, -3)),
    slice(1, 8, 3),
    slice(-2, 1, -2),
    _breadth(slice(8, -20, -3)),  # negative steps: slice(-2, 1, -2)
    slice(5, 2),  # empty
    _breadth((Ellipsis,)),  # Ellipsis: test_index_forms_2d's
    (slice(-100, 100, 4),),
    np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 1], dtype=bool),
]

INDICES_2D = [
    -1,
    (1, 2),
    (-1, -1),
    (slice(1, -1), slice(1, -1)),
    (slice(None, None, 2), slice(None, None, -2)),
    (Ellipsis, slice(-2, None)),
    (0, Ellipsis),
    (slice(4, 0, -3), Ellipsis),
    (-2, Ellipsis, slice(None, None, 3)),
    Ellipsis,
    np.eye(5, 6, k=1, dtype=bool),
    np.arange(30).reshape(5, 6) % 4 == 1,
]
# test_index_forms_2d's fast cases; the others are breadth (tests_thorough):
# ints (1, 2) and (-1, -1) of -1 and (-2, ..., ::3), interior slices
# (1:-1, 1:-1) of (::2, ::-2), (0, ...) and (4:0:-3, ...) of
# (..., -2:) and (-2, ..., ::3), a second mask of the first. All twelve run
# in the fast test_same_stride_one_index_is_output_index too.
FAST_2D = (0, 4, 5, 8, 9, 10)

GEOMETRIES_1D = [
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=3),
    dict(kernel_size=4, strides=2, padding=((1, 2),), dilation=2),
    dict(kernel_size=2, strides=3, padding="same", boundary="wrap"),
    dict(kernel_size=-1, padding=((3, -2),), boundary="reflect"),
]

# ("same", stride 1 is test_same_stride_one_index_is_output_index)
GEOMETRIES_2D = [
    dict(kernel_size=(3, 2), strides=(2, 1), padding=("valid", 1), boundary="edge"),
    dict(kernel_size=(2, 3), dilation=(2, 1), padding=((0, 3), "same"), cval=2.5),
]


def _tap_func(scale, offset, tap):
    def func(w):
        return scale * w[tap] + offset

    return func


def _index_stencils(x, geometries, index):
    """For each geometry: default + `index` region + an overlapping region on
    top (later wins); the stencils and their reference outputs on `x`."""
    stencils, expected = [], []
    for geo in geometries:
        kernel = resolve_kernel(geo["kernel_size"], x.shape)
        first, last = (0,) * x.ndim, tuple(k - 1 for k in kernel)
        top = (..., slice(-3, None, 2))
        stencils.append(
            es.kmap(_tap_func(-2.0, -5.0, first), **geo)
            .at[index]
            .set(lambda w: jnp.sum(w) * 3 + 1)
            .at[top]
            .set(_tap_func(10.0, 0.5, last))
        )
        table = [
            (index, lambda w: np.sum(w) * 3 + 1),
            (top, _tap_func(10.0, 0.5, last)),
        ]
        expected.append(
            reference_regions(_tap_func(-2.0, -5.0, first), table, x, **geo)
        )
    return stencils, expected


_PARAMETER_SET = type(pytest.param(None))


def _session_group(params, index):
    """The indices of `params` that run in the same session as `index`: the
    fast ones, or the breadth ones (marked `thorough`)."""
    entries = [
        (p.values[0], True) if isinstance(p, _PARAMETER_SET) else (p, False)
        for p in params
    ]
    breadth = next(marked for value, marked in entries if value is index)
    return tuple(value for value, marked in entries if marked == breadth)


_INDEX_OUTPUTS: dict = {}


def _index_cases(x, geometries, index, params):
    """`index`'s stencils (`_index_stencils`) against the reference. The
    stencils of all the indices of `params` that run in this session are
    applied in one `jit` program, compiled once (cached by the group)."""
    group = _session_group(params, index)
    key = (id(geometries), tuple(id(value) for value in group))
    if key not in _INDEX_OUTPUTS:
        stencils = [
            stencil
            for value in group
            for stencil in _index_stencils(x, geometries, value)[0]
        ]
        outs = jax.jit(lambda u: [stencil(u) for stencil in stencils])(x)
        count = len(geometries)
        _INDEX_OUTPUTS[key] = {
            id(value): outs[number * count : (number + 1) * count]
            for number, value in enumerate(group)
        }
    outs = _INDEX_OUTPUTS[key][id(index)]
    _, expected = _index_stencils(x, geometries, index)
    for geo, out, want in zip(geometries, outs, expected):
        try:
            _check(out, want, rtol=1e-5, atol=1e-4)
        except AssertionError as error:
            raise AssertionError(f"geometry {geo}") from error


@pytest.mark.parametrize("index", INDICES_1D, ids=_index_id)
def test_index_forms_1d(index):
    x = np.random.default_rng(0).normal(size=(10,)).astype(np.float32)
    _index_cases(x, GEOMETRIES_1D, index, INDICES_1D)


PARAMS_2D = [
    index if number in FAST_2D else _breadth(index)
    for number, index in enumerate(INDICES_2D)
]


@pytest.mark.parametrize("index", PARAMS_2D, ids=_index_id)
def test_index_forms_2d(index):
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    _index_cases(x, GEOMETRIES_2D, index, PARAMS_2D)


def test_same_stride_one_index_is_output_index():
    """With "same" padding and stride 1 the anchor is the output coordinate,
    so the result is plain NumPy assignment on the output."""
    x = np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32)
    base = es.kmap(lambda w: w[0, 0] * 0.0 - 1.0, kernel_size=(3, 4), padding="same")
    stencils = [base.at[index].set(lambda w: w[1, 1]) for index in INDICES_2D]
    outs = jax.jit(lambda u: [stencil(u) for stencil in stencils])(jnp.asarray(x))
    for index, out in zip(INDICES_2D, outs):
        expected = np.full(x.shape, -1.0, np.float32)
        expected[index] = x[index]
        np.testing.assert_array_equal(out, expected, err_msg=repr(index))


# --------------------------------------------------------------------------
# Later wins, default, uncovered positions.


def test_later_regions_win():
    x = np.arange(10.0, dtype=np.float32)
    base = es.kmap(kernel_size=1)
    a = base.at[:6].set(lambda w: w[0] + 100).at[4:].set(lambda w: w[0] + 200)
    b = base.at[4:].set(lambda w: w[0] + 200).at[:6].set(lambda w: w[0] + 100)
    # the same index set twice: the second function wins
    c = a.at[...].set(lambda w: -w[0])
    out_a, out_b, out_c = jax.jit(lambda u: (a(u), b(u), c(u)))(x)  # one program
    np.testing.assert_array_equal(out_a, x + np.repeat([100, 200], [4, 6]))
    np.testing.assert_array_equal(out_b, x + np.repeat([100, 200], [6, 4]))
    np.testing.assert_array_equal(out_c, -x)


def test_default_covers_positions_in_no_region():
    x = np.arange(12.0, dtype=np.float32).reshape(3, 4)
    stencil = (
        es.kmap(lambda w: w[0, 0] * 10, kernel_size=(1, 1))
        .at[1, 1:3]
        .set(lambda w: -w[0, 0])
    )
    expected = np.arange(12.0).reshape(3, 4) * 10
    expected[1, 1:3] = -np.arange(12.0).reshape(3, 4)[1, 1:3]
    np.testing.assert_array_equal(stencil(x), expected)


@pytest.mark.parametrize(
    "geo, indices, position",
    [
        (dict(kernel_size=3, padding="same"), [slice(1, None)], (0,)),
        (dict(kernel_size=3, padding="same"), [slice(None, 4), slice(5, None)], (4,)),
        (dict(kernel_size=3), [slice(None, None, 2)], (0,)),  # anchors are o + 1
        (dict(kernel_size=1, padding=1), [Ellipsis], None),  # anchors in the padding
    ],
)
def test_uncovered_position_without_default_is_value_error(geo, indices, position):
    stencil = es.kmap(**geo)
    for index in indices:
        stencil = stencil.at[index].set(lambda w: w[0])
    x = jnp.arange(10.0)
    owners = owner_map(x.shape, indices, False, **geo)
    for apply in (stencil, jax.jit(stencil)):
        with pytest.raises(ValueError, match="covered by no region") as info:
            apply(x)
        named = _uncovered_position(str(info.value))
        assert owners[named] == NO_OWNER
        if position is not None:
            assert named == position


def test_all_positions_covered_without_default():
    x = jnp.arange(10.0)
    stencil = (
        es.kmap(kernel_size=3, padding="same", relative=True)
        .at[:5]
        .set(lambda w: w[-1])
        .at[5:]
        .set(lambda w: w[1])
    )
    np.testing.assert_array_equal(stencil(x), [0, 0, 1, 2, 3, 6, 7, 8, 9, 0])


def test_stencil_without_any_function_is_value_error():
    with pytest.raises(ValueError):
        es.kmap(kernel_size=3)(jnp.arange(5.0))


# --------------------------------------------------------------------------
# Output dtypes and shapes across regions.


def test_dtypes_promoted_across_regions():
    x = np.arange(10, dtype=np.int32)
    mixed = es.kmap(lambda w: w[0], kernel_size=1).at[::2].set(lambda w: w[0] * 1.5)
    no_default = (
        es.kmap(kernel_size=1)
        .at[:5]
        .set(lambda w: w[0] + 1)
        .at[5:]
        .set(lambda w: w[0] / 2)
    )
    ints = es.kmap(lambda w: w[0], kernel_size=1).at[3].set(lambda w: w[0] * 7)
    outs = jax.jit(lambda u: [s(u) for s in (mixed, no_default, ints)])(x)

    assert outs[0].dtype == jnp.float32
    np.testing.assert_array_equal(
        outs[0], np.arange(10) * np.where(np.arange(10) % 2, 1, 1.5)
    )
    assert outs[1].dtype == jnp.float32
    np.testing.assert_array_equal(outs[1], [1, 2, 3, 4, 5, 2.5, 3, 3.5, 4, 4.5])
    assert outs[2].dtype == jnp.int32
    np.testing.assert_array_equal(outs[2], [0, 1, 2, 21, 4, 5, 6, 7, 8, 9])


def test_dtypes_promoted_on_masked_path():
    rng = np.random.default_rng(3)
    x = rng.integers(-4, 5, size=(20, 20)).astype(np.int32)
    mask = rng.random((20, 20)) < 0.5
    stencil = (
        es.kmap(lambda w: w[0, 0] * 2, kernel_size=(1, 1))
        .at[mask]
        .set(lambda w: w[0, 0] * 0.5)
    )
    out = jax.jit(stencil)(jnp.asarray(x))
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, np.where(mask, x * 0.5, x * 2))


def test_per_position_shape_mismatch_names_both_regions():
    x = jnp.arange(10.0)
    default_vs_region = (
        es.kmap(lambda w: w[0], kernel_size=1)
        .at[1]
        .set(lambda w: jnp.stack([w[0], w[0]]))
    )
    with pytest.raises(ValueError) as info:
        default_vs_region(x)
    message = str(info.value)
    assert "default function" in message and "[1]" in message

    two_regions = (
        es.kmap(kernel_size=1)
        .at[:5]
        .set(lambda w: w[0])
        .at[5:]
        .set(lambda w: jnp.zeros((3,)) + w[0])
    )
    with pytest.raises(ValueError) as info:
        jax.jit(two_regions)(x)
    message = str(info.value)
    assert "[:5]" in message and "[5:]" in message


def test_vector_outputs_from_all_regions():
    x = np.arange(1.0, 7.0)
    stencil = (
        es.kmap(lambda w: w, kernel_size=3, padding="same")
        .at[::2]
        .set(lambda w: w[::-1] * 10)
    )
    expected = reference_regions(
        lambda w: w,
        [(slice(None, None, 2), lambda w: w[::-1] * 10)],
        x,
        3,
        padding="same",
    )
    _check(stencil(jnp.asarray(x)), expected)


@pytest.mark.parametrize(
    "shape, index",
    [
        ((10,), 10),
        ((10,), -11),
        ((10,), (Ellipsis, 12)),
        ((5, 6), (0, 6)),
        ((5, 6), (-6, 0)),
        ((5, 6), (5, Ellipsis)),
        ((5, 6), (0, 0, 0)),  # more entries than dims
    ],
)
def test_integer_outside_input_is_index_error(shape, index):
    x = np.zeros(shape, np.float32)
    stencil = es.kmap(lambda w: jnp.sum(w), kernel_size=1).at[index].set(jnp.sum)
    with pytest.raises(IndexError):
        stencil(x)
    with pytest.raises(IndexError):
        jax.jit(stencil)(x)


def test_valid_index_selecting_no_anchor_is_not_an_error():
    # input index 9 exists; with a valid 3-window no window is anchored there
    x = jnp.arange(10.0)
    stencil = es.kmap(lambda w: w[1], kernel_size=3).at[9].set(lambda w: w[1] * 0 - 1)
    np.testing.assert_array_equal(stencil(x), np.arange(1.0, 9.0))


def test_mask_of_wrong_shape_is_value_error():
    stencil = (
        es.kmap(lambda w: w[0], kernel_size=1).at[np.ones(9, bool)].set(lambda w: -w[0])
    )
    with pytest.raises(ValueError, match="shape"):
        stencil(jnp.zeros(10))


# --------------------------------------------------------------------------
# Region functions run only on their own positions.


def _reciprocal_where_nonzero(index):
    return (
        es.kmap(lambda w: w[0, 0] * 0, kernel_size=(1, 1))
        .at[index]
        .set(lambda w: 1 / w[0, 0])
    )


def _expected_reciprocal(x):
    safe = np.where(x != 0, x, 1)
    value = np.where(x != 0, 1 / safe, 0)
    grad = np.where(x != 0, -1 / safe**2, 0)
    return value, grad


@pytest.mark.parametrize("kind", ["slices", "small mask", "large mask"])
def test_region_function_runs_only_on_its_positions(kind):
    """`1 / x` on the positions where `x != 0`: output and gradient finite."""
    rng = np.random.default_rng(4)
    if kind == "slices":
        x = np.ones((6, 7), np.float32) * 2
        x[0, :] = 0
        x[:, 5:] = 0
        index = (slice(1, None), slice(None, 5))
    else:
        shape = (4, 5) if kind == "small mask" else (20, 20)
        x = rng.integers(0, 3, size=shape).astype(np.float32)
        index = x != 0
    stencil = _reciprocal_where_nonzero(index)
    value, grad = _expected_reciprocal(x)
    out, g = jax.jit(  # one program: the output and its gradient
        lambda u: (stencil(u), jax.grad(lambda v: jnp.sum(stencil(v)))(u))
    )(x)
    assert np.isfinite(np.asarray(out)).all()
    _check(out, value)
    assert np.isfinite(np.asarray(g)).all(), (
        f"NaN/inf gradient at {np.argwhere(~np.isfinite(np.asarray(g)))[:5].tolist()}"
    )
    _check(g, grad)


def test_large_mask_takes_masked_path():
    """The 20x20 random masks used here need more than 64 tiles, so the
    stencil selects with static masks (guards against vacuous masked tests)."""
    from eqx_stencil._regions import MAX_BOXES, decompose, normalize_region, plan

    mask = np.random.default_rng(4).random((20, 20)) < 0.5
    layouts = es.kmap(kernel_size=(3, 3), padding="same")._geometry.layout((20, 20))
    assert MAX_BOXES == 64
    assert decompose(plan(layouts, [normalize_region(mask)], True)) is None


@pytest.mark.parametrize("columns_last", [True, False])
def test_boundary_regions_take_the_fewest_tiles(columns_last):
    """Rows then columns (columns win the corners) is 5 tiles when the columns
    are cut first: interior, two row strips, two whole columns; rows first
    would split the corners off (9 tiles). Symmetrically for rows last."""
    from eqx_stencil._regions import decompose, normalize_region, plan

    rows = [normalize_region((0, slice(None))), normalize_region((-1, slice(None)))]
    columns = [normalize_region((slice(None), 0)), normalize_region((slice(None), -1))]
    interior = [normalize_region((slice(1, -1), slice(1, -1)))]
    regions = interior + (rows + columns if columns_last else columns + rows)
    layouts = es.kmap(kernel_size=(3, 3), padding="same")._geometry.layout((9, 7))
    table = plan(layouts, regions, False)
    tiles, _ = decompose(table)
    assert len(tiles) == 5
    for box, owner in tiles:  # every tile has one owner everywhere
        cells = table.owners[
            tuple(
                slice(np.searchsorted(e, a), np.searchsorted(e, b))
                for e, (a, b) in zip(table.edges, box)
            )
        ]
        assert np.all(cells == owner)


# --------------------------------------------------------------------------
# The kernex README's "Apply stencil operations by index".


def test_readme_apply_by_index():
    F = es.kmap(kernel_size=(1,))
    F = F.at[0].set(lambda x: x[0] ** 2).at[1:].set(lambda x: x[0] ** 3)
    array = np.arange(1, 11).astype("float32")
    np.testing.assert_allclose(
        F(array), [1.0, 8.0, 27.0, 64.0, 125.0, 216.0, 343.0, 512.0, 729.0, 1000.0]
    )
    dFdx = jax.grad(lambda x: jnp.sum(F(x)))
    expected_grad = [2.0, 12.0, 27.0, 48.0, 75.0, 108.0, 147.0, 192.0, 243.0, 300.0]
    np.testing.assert_allclose(dFdx(array), expected_grad)
    np.testing.assert_allclose(jax.jit(dFdx)(array), expected_grad)


# --------------------------------------------------------------------------
# Repeated use and transformations.


def _mixed_stencil():
    """A 2D region stencil with slices, a negative index and a small mask.

    The mask's two points (not a box) lie in the column next to the last: 12
    tiles, where points in the middle of the grid cut the default region into
    18, and the gradient program is half as large (the many-tile gradient is
    test_region_function_runs_only_on_its_positions's "small mask")."""
    mask = np.zeros((6, 7), bool)
    mask[2, 5] = mask[4, 5] = True
    return (
        es.kmap(lambda w: jnp.sum(w * w), kernel_size=(3, 3), padding="same")
        .at[0]
        .set(lambda w: jnp.sin(w[1, 1]))
        .at[:, -1]
        .set(lambda w: w[0, 0] * w[2, 1])
        .at[mask]
        .set(lambda w: jnp.exp(w[1, 2]))
    )


def _mixed_reference(x):
    mask = np.zeros((6, 7), bool)
    mask[2, 5] = mask[4, 5] = True
    return reference_regions(
        lambda w: np.sum(w * w),
        [
            (0, lambda w: np.sin(w[1, 1])),
            ((slice(None), -1), lambda w: w[0, 0] * w[2, 1]),
            (mask, lambda w: np.exp(w[1, 2])),
        ],
        x,
        (3, 3),
        padding="same",
    )


def _mixed_input(seed=6):
    return np.random.default_rng(seed).normal(size=(6, 7)).astype(np.float32)


@functools.cache
def _mixed_reference_grad():
    """The gradient of `sum(_mixed_reference(u) ** 2)` at `_mixed_input()`:
    central differences of the reference in float64, input by input (for
    test_jit_then_grad and test_filter_jit_with_stencil_as_argument)."""
    u0 = _mixed_input().astype(np.float64)
    eps = 1e-5
    grad = np.zeros_like(u0)
    for i in np.ndindex(u0.shape):
        step = np.zeros_like(u0)
        step[i] = eps
        up = np.sum(_mixed_reference(u0 + step) ** 2)
        down = np.sum(_mixed_reference(u0 - step) ** 2)
        grad[i] = (up - down) / (2 * eps)
    return grad


@functools.cache
def _mixed():
    """One mixed stencil shared by the cached programs below."""
    return _mixed_stencil()


@functools.cache
def _mixed_jit():
    """`jax.jit` of the shared mixed stencil, compiled once for
    test_call_twice_and_trace_twice and test_jit_then_grad."""
    return jax.jit(_mixed())


@functools.cache
def _mixed_vmap():
    """`jax.jit(jax.vmap(...))` of the shared mixed stencil (its second
    trace), compiled once for test_call_twice_and_trace_twice and test_vmap."""
    return jax.jit(jax.vmap(_mixed()))


def test_call_twice_and_trace_twice():
    line = es.kmap(kernel_size=3, padding="same", relative=True)
    line = line.at[::2].set(lambda w: w[-1] * w[1]).at[1::2].set(lambda w: w[0] + 1)
    u = np.arange(1.0, 8.0, dtype=np.float32)
    expected_line = [0, 3, 8, 5, 24, 7, 0]
    np.testing.assert_array_equal(line(u), expected_line)  # eager
    np.testing.assert_array_equal(line(u), expected_line)  # and again
    x = _mixed_input(5)
    first = _mixed_jit()
    _check(first(x), _mixed_reference(x))
    _check(first(x + 1), _mixed_reference(x + 1))  # the same program, new values
    # The same stencil traced a second time, in another program.
    xs = np.stack([x - 1, x, x + 2])
    _check(_mixed_vmap()(xs), np.stack([_mixed_reference(v) for v in xs]))


def test_jit_then_grad():
    x = _mixed_input()
    jitted = _mixed_jit()
    _check(jitted(x), _mixed_reference(x))  # compile the forward first
    grad_outer = jax.grad(lambda u: jnp.sum(jitted(u) ** 2))(jnp.asarray(x))
    # against central differences of the reference, in float64
    _check(grad_outer, _mixed_reference_grad())


def test_filter_jit_with_stencil_as_argument():
    x = _mixed_input()

    @eqx.filter_jit
    def apply(stencil, u):
        return stencil(u)

    mixed = _mixed_stencil()
    plain = es.kmap(lambda w: jnp.sum(w * w), kernel_size=(3, 3), padding="same")
    _check(apply(mixed, x), _mixed_reference(x))
    _check(
        apply(plain, x),
        reference_kmap(lambda w: np.sum(w * w), x, (3, 3), padding="same"),
    )
    _check(apply(mixed, x), _mixed_reference(x))
    grad = eqx.filter_jit(eqx.filter_grad(lambda u, s: jnp.sum(s(u) ** 2)))
    _check(grad(jnp.asarray(x), mixed), _mixed_reference_grad())


def test_vmap():
    xs = np.random.default_rng(8).normal(size=(3, 6, 7)).astype(np.float32)
    _check(_mixed_vmap()(xs), np.stack([_mixed_reference(x) for x in xs]))


# --------------------------------------------------------------------------
# Heat equation: interior + Dirichlet rows + Neumann columns.


def _heat_stencil():
    def interior(u, alpha):
        lap = u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]
        return u[0, 0] + alpha * lap

    return (
        es.kmap(kernel_size=(3, 3), padding="same", relative=True)
        .at[1:-1, 1:-1]
        .set(interior)
        .at[:, 0]
        .set(lambda u, alpha: u[0, 1])
        .at[:, -1]
        .set(lambda u, alpha: u[0, -1])
        .at[0, :]
        .set(lambda u, alpha: 0.0)
        .at[-1, :]
        .set(lambda u, alpha: 0.0)
    )


def _heat_by_hand(u, alpha, xp=jnp):
    """One step written with array slices, in `xp` (jax.numpy or NumPy):
    interior update, Neumann columns, then the Dirichlet rows (corners 0)."""
    lap = u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4 * u[1:-1, 1:-1]
    interior = u[1:-1, 1:-1] + alpha * lap
    middle = xp.concatenate([u[1:-1, 1:2], interior, u[1:-1, -2:-1]], axis=1)
    zeros = xp.zeros_like(u[:1])
    return xp.concatenate([zeros, middle, zeros], axis=0)


def _solve(step, steps=4):
    def solve(u, alpha):
        return lax.fori_loop(0, steps, lambda _, v: step(v, alpha), u)

    return solve


def test_heat_step_matches_hand_written():
    heat = _heat_stencil()
    u = np.random.default_rng(9).random((7, 9)).astype(np.float32)
    alpha = np.float32(0.2)
    alphas = np.asarray([0.05, 0.1, 0.2], np.float32)
    # One step, ten steps in a loop and a batch over alpha in one program,
    # against the same steps by hand in NumPy.
    step, solved, batched = jax.jit(
        lambda u, alpha, alphas: (
            heat(u, alpha),
            _solve(heat, 10)(u, alpha),
            jax.vmap(heat, in_axes=(None, 0))(u, alphas),
        )
    )(u, alpha, alphas)
    _check(step, _heat_by_hand(u, alpha, np), atol=1e-6)
    by_hand = u
    for _ in range(10):
        by_hand = _heat_by_hand(by_hand, alpha, np)
    _check(solved, by_hand, atol=1e-5)
    by_hand = np.stack([_heat_by_hand(u, a, np) for a in alphas])
    _check(batched, by_hand, atol=1e-6)


def test_heat_gradients_match_hand_written():
    heat = _heat_stencil()
    u = jnp.asarray(np.random.default_rng(10).random((6, 8)).astype(np.float32))
    alpha = jnp.float32(0.15)

    def loss(step):
        return lambda u, alpha: jnp.sum(jnp.sin(_solve(step)(u, alpha)))

    got, want = jax.jit(  # both gradients in one program
        lambda u, alpha: [
            jax.grad(loss(step), argnums=(0, 1))(u, alpha)
            for step in (heat, _heat_by_hand)
        ]
    )(u, alpha)
    _check(got[0], np.asarray(want[0]), atol=1e-5)
    _check(got[1], np.asarray(want[1]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "wrt, steps",
    [
        # second order through one step of the region stencil (no loop): the
        # loop is linear plumbing, checked at first order against the
        # hand-written solver by test_heat_gradients_match_hand_written
        ("u", 1),
        # breadth (tests_thorough): three steps of the loop at second order;
        # alpha at first order (the fast test_heat_gradients_match_hand_written
        # checks the gradient with respect to alpha)
        pytest.param("u", 3, marks=pytest.mark.thorough),
        pytest.param("alpha", 3, marks=pytest.mark.thorough),
    ],
)
def test_heat_check_grads(wrt, steps):
    heat = _heat_stencil()
    with jax.enable_x64(True):
        u = jnp.asarray(np.random.default_rng(11).random((6, 7)))
        alpha = jnp.asarray(0.2)
        assert u.dtype == jnp.float64
        solve = jax.jit(heat if steps == 1 else _solve(heat, steps))
        if wrt == "u":
            check_grads(lambda v: solve(v, alpha), (u,), order=2, modes=["fwd", "rev"])
        else:
            check_grads(lambda a: solve(u, a), (alpha,), order=1, modes=["fwd", "rev"])


# --------------------------------------------------------------------------
# hypothesis: random region tables against the reference.


def _padding_dim():
    ints = st.integers(-1, 3)
    return st.one_of(ints, st.tuples(ints, ints), st.sampled_from(PAD_STRINGS))


@st.composite
def geometries(draw, sizes=(2, 9), ranks=(1, 2), max_kernel=3, max_stride=3):
    """A random valid geometry and its input shape; `-1` (whole-dim) kernels
    only for dims of length <= 4."""
    rank = draw(st.integers(*ranks))
    shape, kernels, strides, dilations, paddings = [], [], [], [], []
    for _ in range(rank):
        whole = [-1] if sizes[0] <= 4 else []
        # hypothesis favours early entries: real windows and long dims first
        k = draw(st.sampled_from([*range(max_kernel, 0, -1), *whole]))
        s = draw(st.integers(1, max_stride))
        d = draw(st.integers(1, 2))
        p = draw(_padding_dim())
        feasible = [
            n
            for n in range(sizes[1], sizes[0] - 1, -1)
            if fits((n,), (k,), (s,), (p,), (d,)) and (k != -1 or n <= 4)
        ]
        assume(feasible)
        shape.append(draw(st.sampled_from(feasible)))
        kernels.append(k)
        strides.append(s)
        dilations.append(d)
        paddings.append(p)
    geo = dict(
        kernel_size=tuple(kernels),
        strides=tuple(strides),
        padding=tuple(paddings),
        dilation=tuple(dilations),
    )
    boundary = draw(st.sampled_from(MODES))
    cval = draw(st.sampled_from([0, 1.5, -2.0]))
    return tuple(shape), geo, dict(boundary=boundary, cval=cval)


def _index_item(draw, n):
    if draw(st.booleans()):
        return draw(st.integers(-n, n - 1))
    bound = st.none() | st.integers(-n - 2, n + 2)
    step = draw(st.sampled_from([None, 1, 2, 3, -1, -2, -3]))
    return slice(draw(bound), draw(bound), step)


@st.composite
def indices(
    draw,
    shape,
    kinds=("entries", "entries", "ellipsis", "mask"),
    densities=(0.1, 0.5, 0.9),
):
    """A random region index for an input of `shape`."""
    rank = len(shape)
    kind = draw(st.sampled_from(kinds))
    if kind == "mask":
        seed = draw(st.integers(0, 2**31 - 1))
        density = draw(st.sampled_from(densities))
        return np.random.default_rng(seed).random(shape) < density
    if kind == "ellipsis":  # a bare `...` is the "cover all first" region
        count = draw(st.integers(1, rank))
        head = draw(st.integers(0, count))
        dims = [*range(head), *range(rank - (count - head), rank)]
        items = [_index_item(draw, shape[d]) for d in dims]
        return (*items[:head], Ellipsis, *items[head:])
    count = draw(st.integers(1, rank))
    items = tuple(_index_item(draw, shape[d]) for d in range(count))
    return items[0] if count == 1 and draw(st.booleans()) else items


def _random_function(draw, number, kernel, relative):
    """A function distinct per `number`: a scaled tap or a scaled window sum.
    Returns the JAX version and the NumPy one (of the natural-order window)."""
    scale, offset = number + 1.5, 10.0 * number - 3
    if draw(st.booleans(), "whole window"):
        return (
            lambda w: jnp.sum(w) * scale + offset,
            lambda w: np.sum(w) * scale + offset,
        )
    tap = []
    for k in kernel:
        if relative:
            anchor = (k - 1) // 2
            tap.append(draw(st.integers(-anchor, k - 1 - anchor)))
        else:
            tap.append(draw(st.integers(-k, k - 1)))
    tap = tuple(tap)

    def func(w):
        return w[tap] * scale + offset

    return func, relative_func(func) if relative else func


def _check_table(data, shape, geo, fill, strategy):
    relative = data.draw(st.booleans(), "relative")
    kernel = resolve_kernel(geo["kernel_size"], shape)
    count = data.draw(st.integers(1, 4), "regions")
    table = []
    for number in range(count):
        index = data.draw(strategy, f"index {number}")
        table.append((index, *_random_function(data.draw, number, kernel, relative)))
    has_default = data.draw(st.booleans(), "default")
    default = (
        _random_function(data.draw, -7, kernel, relative)
        if has_default
        else (None, None)
    )
    cover_first = data.draw(st.sampled_from([True, True, False]), "cover all first")
    if not has_default and cover_first:
        # a region covering everything underneath the others
        everything = data.draw(st.sampled_from([Ellipsis, (Ellipsis,), slice(None)]))
        table.insert(0, (everything, *_random_function(data.draw, 5, kernel, relative)))

    stencil = es.kmap(default[0], relative=relative, **geo, **fill)
    for index, func, _ in table:
        stencil = stencil.at[index].set(func)
    x = np.random.default_rng(data.draw(st.integers(0, 99), "seed"))
    x = x.normal(size=shape).astype(np.float32)

    owners = owner_map(shape, [index for index, _, _ in table], has_default, **geo)
    if (owners == NO_OWNER).any():
        event("uncovered position: ValueError")
        with pytest.raises(ValueError, match="covered by no region") as info:
            jax.jit(stencil)(jnp.asarray(x))
        assert owners[_uncovered_position(str(info.value))] == NO_OWNER
        return
    event(f"compared, owners used: {len(np.unique(owners))}")
    expected = reference_regions(
        default[1],
        [(index, ref) for index, _, ref in table],
        x,
        **geo,
        **fill,
        dtype=np.float32,
    )
    _check(jax.jit(stencil)(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-4)


@settings(max_examples=40, deadline=None)  # cheap: small inputs
@given(geometry=geometries(), data=st.data())
def test_random_region_tables(geometry, data):
    shape, geo, fill = geometry
    _check_table(data, shape, geo, fill, indices(shape))


@settings(max_examples=EXAMPLES, deadline=None)
@given(geometry=geometries(sizes=(14, 22), ranks=(2, 2), max_stride=2), data=st.data())
def test_random_region_tables_with_large_masks(geometry, data):
    """Large random masks: more than 64 tiles, so the masked path."""
    shape, geo, fill = geometry
    masks = indices(shape, ("mask", "mask", "entries"), densities=(0.3, 0.5, 0.7))
    _check_table(data, shape, geo, fill, masks)
