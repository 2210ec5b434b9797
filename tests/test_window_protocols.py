"""The window a stencil function receives behaves as the array it stands for.

Protocol by protocol (iteration, unpacking, `reversed`, `len`, comparisons with
scalars and arrays, NumPy on the left, `__jax_array__`, methods, attributes,
`.T`, `.at`, every indexing form, `bool`/`float`/`hash`/`np.asarray` errors),
each expression computed through a stencil is compared with the same
expression on the plain NumPy window (natural order, index 0 = first tap) in a
loop over positions. Every mode (absolute, relative, named axes relative and
absolute), both window lowerings (unrolled and `vmap`) and multi-field
(pytree of windows) inputs are covered; the shift lowering's proxy is covered
because every call records taps with it first, so a proxy that computed
instead of signalling would give a wrong answer here.
"""

from __future__ import annotations

import functools
import operator

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from reference import reference_kmap

import eqx_stencil as es
from eqx_stencil import _lower


KERNEL = (3, 2)
ANCHOR = (1, 0)  # (k - 1) // 2
GEOMETRY = dict(kernel_size=KERNEL, padding="same")
# The whole-window and indexing tests run in two geometries. The fast suite's
# `STRIP` pads one side: an interior box and one boundary strip (the padded
# windows), each with its own window lowering; `GEOMETRY` ("same") has four
# boxes (strips on both sides of dim 0 and on dim 1): more of the same boxes,
# twice the program to trace and compile, so only `--thorough` runs it.
STRIP = dict(kernel_size=KERNEL, padding=((1, 0), (0, 0)))
GEOMETRIES = [
    pytest.param(STRIP, id="strip"),
    pytest.param(GEOMETRY, id="same", marks=pytest.mark.thorough),
]
X = np.array(
    [[0.0, 1.5, -2.0, 0.0], [3.0, 0.0, 0.5, -1.0], [0.0, 2.0, 0.0, 4.0]]
    + [[-0.5, 0.0, 1.0, 2.5], [1.0, -3.0, 0.0, 0.0]],
    np.float32,
)
Y = np.arange(20, dtype=np.float32).reshape(5, 4) % 3 - 1.0
W = np.array([[0.5, -1.0], [2.0, 0.0], [-3.0, 1.5]], np.float32)
MASK = np.array([[True, False], [False, True], [True, True]])
MODES = {
    "absolute": dict(relative=False),
    "relative": dict(relative=True),
    "named": dict(relative=True, named_axis={0: "i", 1: "j"}),
    "named_absolute": dict(relative=False, named_axis={0: "i", 1: "j"}),
}


def _unpack(w):
    a, *rest = w
    return a * rest[-1]


# Whole-window protocols: the same expression on a window and a plain array.
PROTOCOLS = {
    "builtin_sum": lambda w: sum(w),
    "list": lambda w: jnp.stack(list(w)),
    "enumerate": lambda w: sum(i * row for i, row in enumerate(w)),
    "unpack": lambda w: (lambda a, b, c: a - 2 * b + 3 * c)(*w),
    "star_unpack": _unpack,
    "reversed": lambda w: jnp.stack(list(reversed(w))),
    "zip": lambda w: sum(a * b for a, b in zip(w, reversed(w))),
    "len": lambda w: len(w) * jnp.sum(w),
    "eq_scalar": lambda w: jnp.sum(w == 0.0),
    "ne_scalar": lambda w: jnp.sum(w != 0.0),
    "eq_reflected": lambda w: 0.0 == w,
    "order": lambda w: (w < 0.5) & (1.0 > w) | (w >= 2.0),
    "eq_array": lambda w: w == W,
    "numpy_left": lambda w: W * w - W / (abs(w) + 1.0),
    "numpy_left_eq": lambda w: W != w,
    "jax_left": lambda w: jnp.asarray(W) ** 2 - w,
    "arithmetic": lambda w: -(abs(w) ** 2) // 1.5 % 2.0 + (+w),
    "divmod": lambda w: jnp.stack(divmod(w, 1.5)),
    "round": lambda w: round(w * 3),
    "matmul": lambda w: w.T @ w,
    "rmatmul": lambda w: W.T @ w,
    "jax_array": lambda w: jnp.asarray(w) * jnp.max(w) + jnp.where(w > 0, w, -w),
    "methods": lambda w: w.sum(axis=0) + w.max() - w.mean() + w.clip(-1, 1)[0],
    "astype": lambda w: w.astype(jnp.int32),
    "reshape": lambda w: w.reshape(-1)[::-1],
    "attributes": lambda w: jnp.full(w.shape, w.size + w.ndim, w.dtype) * w,
    "transpose": lambda w: w.T,
    "tree_map": lambda w: jax.tree.map(lambda a: a * 2, w),
    "vmap": lambda w: jax.vmap(lambda row: row[0] - row[-1])(w),
    # Transformations and derivative rules get the plain array (indexed plainly).
    "jit": lambda w: jax.jit(lambda v: v[0, 1] * v)(w),
    "grad": lambda w: jax.grad(lambda v: jnp.sum(v**3))(w),
    "custom_jvp": lambda w: jax.nn.relu(w) + jnp.logaddexp(w, 0.0),
    "partition": lambda w: eqx.combine(*eqx.partition(w, eqx.is_array)) + 1,
}
# Protocols that raise for a traced array: they raise the same for a window.
RAISING = {
    "bool": bool,
    "float": float,
    "int": int,
    "complex": complex,
    "index": operator.index,
    "in": lambda w: 0.0 in w,
    "np_asarray": np.asarray,
    "hash": hash,
}


def _relative(mode: str) -> bool:
    return MODES[mode]["relative"]


def _int_key(mode: str, *plain: int) -> tuple:
    """The int key a mode writes for natural-order index `plain`."""
    if _relative(mode):
        return tuple(i - a for i, a in zip(plain, ANCHOR))
    return plain


def _tap_key(mode: str, *plain: int) -> tuple:
    """The key of a mode's own style (names where it has them)."""
    if mode == "named":
        return tuple(f"{n}{i - a:+d}" for n, i, a in zip("ij", plain, ANCHOR))
    if mode == "named_absolute":
        return tuple(f"{n}+{i}" for n, i in zip("ij", plain))
    return _int_key(mode, *plain)


def _slice(mode: str, start: int, stop: int) -> slice:
    shift = ANCHOR[0] if _relative(mode) else 0
    return slice(start - shift, stop - shift)


def indexing_forms(mode: str) -> dict:
    """`name -> (key, plain key)` for every indexing form."""
    (j1,) = _int_key(mode, 0, 1)[1:]
    forms = {
        "tap": (_tap_key(mode, 2, 1), (2, 1)),
        "first_tap": (_tap_key(mode, 0, 0), (0, 0)),
        "row": (_tap_key(mode, 1, 0)[:1], (1,)),
        "slice": ((_slice(mode, 0, 2), j1), (slice(0, 2), 1)),
        "reverse": ((slice(None, None, -1), j1), (slice(None, None, -1), 1)),
        "ellipsis": ((..., j1), (..., 1)),
        "newaxis": ((None, _int_key(mode, 1, 0)[0], ..., None), (None, 1, ..., None)),
        "int_array": (
            (np.array([_int_key(mode, 2, 0)[0], _int_key(mode, 0, 0)[0]]), j1),
            (np.array([2, 0]), 1),
        ),
        "bool_mask": (MASK, MASK),
    }
    if mode == "absolute":
        forms["negative"] = ((-1, -2), (2, 0))
    return forms


# Each test's reference does not depend on the mode or the lowering: computed
# once per key (the test and, where its plain keys differ, the mode).
_REFERENCES: dict = {}


def reference_tree(func, fields, geometry=GEOMETRY, key=None):
    """`func` on the pytree of plain windows (arrays cut from the NumPy
    reference's patches) at every position, stacked; cached under `key` (and
    the geometry).

    `func` is compiled once (`jax.jit`) and called position by position: the
    same expression on a plain (traced) array, without a stencil or `vmap`.
    """
    if key is not None:
        key = (key, repr(geometry))
        if key in _REFERENCES:
            return _REFERENCES[key]
    leaves, structure = jtu.tree_flatten(fields)
    patches = [reference_kmap(lambda p: p, leaf, **geometry) for leaf in leaves]
    out_shape = patches[0].shape[: leaves[0].ndim]
    plain = jax.jit(func)
    results = [
        jtu.tree_map(
            np.asarray, plain(structure.unflatten([jnp.asarray(p[i]) for p in patches]))
        )
        for i in np.ndindex(*out_shape)
    ]
    expected = jtu.tree_map(
        lambda *values: np.stack(values).reshape(out_shape + values[0].shape),
        *results,
    )
    if key is not None:
        _REFERENCES[key] = expected
    return expected


def assert_trees_match(out, expected):
    out_leaves = jtu.tree_leaves_with_path(out)
    expected_leaves = jtu.tree_leaves_with_path(expected)
    assert [p for p, _ in out_leaves] == [p for p, _ in expected_leaves]
    for (path, value), (_, reference) in zip(out_leaves, expected_leaves):
        name = jtu.keystr(path)
        value = np.asarray(value)
        assert value.shape == reference.shape, name
        assert value.dtype.kind == reference.dtype.kind, (name, value.dtype)
        np.testing.assert_allclose(
            value.astype(np.float64), reference, rtol=1e-6, atol=1e-6, err_msg=name
        )


@pytest.fixture(params=["unrolled", "vmap"])
def lowering(request, monkeypatch):
    """Which window lowering runs; the unrolled one reports whether it applied."""
    if request.param == "vmap":
        monkeypatch.setattr(_lower, "MAX_UNROLLED_TAPS", -1)
        return request.param, []
    return request.param, request.getfixturevalue("unroll_applied")


def _mode_lowerings():
    """(mode, lowering) pairs: every mode with the unrolled lowering; with
    `vmap`, "absolute" (int keys) and "named" (relative, with names) in the
    fast suite, "relative" and "named_absolute" breadth (tests_thorough): the
    fast cases check each mode's keys with the unrolled lowering and both
    kinds of keys (absolute, relative) with `vmap`."""
    return [
        pytest.param(mode, kind, id=f"{kind}-{mode}")
        if kind == "unrolled" or mode in ("absolute", "named")
        else pytest.param(mode, kind, id=f"{kind}-{mode}", marks=pytest.mark.thorough)
        for kind in ("unrolled", "vmap")
        for mode in MODES
    ]


def _all_protocols(w):
    return {name: protocol(w) for name, protocol in PROTOCOLS.items()}


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("mode, lowering", _mode_lowerings(), indirect=["lowering"])
def test_protocols_match_plain_window(mode, lowering, geometry):
    out = es.kmap(_all_protocols, **geometry, **MODES[mode])(jnp.asarray(X))
    expected = reference_tree(_all_protocols, X, geometry, key="protocols")
    assert_trees_match(out, expected)
    kind, applied = lowering
    if kind == "unrolled":  # these protocols all have exact plane rules
        assert applied and all(applied)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize(
    "mode",
    # Every mode is checked by the single-field test (same protocols, both
    # lowerings) in the fast suite; here one mode with a pytree of windows.
    [m if m == "named" else pytest.param(m, marks=pytest.mark.thorough) for m in MODES],
)
def test_protocols_match_plain_window_multifield(mode, lowering, geometry):
    # In the fast case ("named") each protocol runs once, on one field, in one
    # lowering: protocol n with the unrolled lowering for even n and `vmap`
    # for odd n, on the first field for n // 2 even and the second otherwise.
    # Each lowering reads both fields, and every protocol reads a window of a
    # pytree, at a quarter of the program; the single-field test checks every
    # protocol with both lowerings in every mode. The other modes (breadth,
    # tests_thorough) run every protocol on both fields with both lowerings.
    kind, _ = lowering
    if mode == "named":
        parity = 0 if kind == "unrolled" else 1
        runs = {
            name: [(number // 2) % 2]
            for number, name in enumerate(PROTOCOLS)
            if number % 2 == parity
        }
    else:
        runs = {name: [0, 1] for name in PROTOCOLS}

    def func(windows):
        u, v = windows  # unpacking the pytree of windows
        return {
            name: tuple(PROTOCOLS[name]((u, v)[field]) for field in fields)
            for name, fields in runs.items()
        }

    fields = (jnp.asarray(X), jnp.asarray(Y))
    out = es.kmap(func, **geometry, **MODES[mode])(fields)
    # The same expressions on the plain windows of each field: the
    # single-field references (one program, shared with the test above).
    on_x = reference_tree(_all_protocols, X, geometry, key="protocols")
    on_y = reference_tree(_all_protocols, Y, geometry, key=("protocols", "Y"))
    expected = {
        name: tuple((on_x, on_y)[field][name] for field in fields)
        for name, fields in runs.items()
    }
    assert_trees_match(out, expected)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("mode, lowering", _mode_lowerings(), indirect=["lowering"])
def test_indexing_forms_match_plain_window(mode, lowering, geometry):
    forms = indexing_forms(mode)

    def func(w):
        return {
            **{name: w[key] for name, (key, _) in forms.items()},
            "at_set": w.at[forms["tap"][0]].set(7.0),
            "at_add": w.at[forms["slice"][0]].add(1.0),
            "at_get": w.at[forms["row"][0]].get(),
        }

    def plain(p):
        return {
            **{name: p[key] for name, (_, key) in forms.items()},
            "at_set": p.at[2, 1].set(7.0),
            "at_add": p.at[0:2, 1].add(1.0),
            "at_get": p[1],
        }

    out = es.kmap(func, **geometry, **MODES[mode])(jnp.asarray(X))
    # The plain keys are the same in every mode but "absolute" (which adds
    # negative indices).
    key = ("indexing", mode == "absolute")
    expected = reference_tree(plain, X, geometry, key=key)
    assert_trees_match(out, expected)


@pytest.mark.parametrize("mode", MODES)
def test_tap_keys_take_the_shift_lowering(mode, monkeypatch):
    forms = indexing_forms(mode)
    keys = {name: forms[name] for name in ("tap", "first_tap")}

    def no_window_lowering(*args, **kwargs):
        raise AssertionError("tap keys must not need the window lowering")

    monkeypatch.setattr(_lower, "_window_lowering", no_window_lowering)
    out = es.kmap(
        lambda w: {name: w[key] for name, (key, _) in keys.items()},
        **GEOMETRY,
        **MODES[mode],
    )(jnp.asarray(X))
    expected = reference_tree(  # the same plain keys in every mode
        lambda p: {name: p[plain] for name, (_, plain) in keys.items()},
        X,
        key="tap_keys",
    )
    assert_trees_match(out, expected)


@functools.cache
def _traced_error(name: str) -> type:
    """The exception type `RAISING[name]` raises for a traced array (the same
    in every mode's case: computed once)."""
    with pytest.raises(Exception) as traced:
        jax.jit(RAISING[name])(jnp.asarray(W))
    return type(traced.value)


@pytest.mark.parametrize("name", RAISING)
@pytest.mark.parametrize("mode", MODES)
def test_raising_protocols_raise_as_for_a_traced_array(name, mode):
    with pytest.raises(_traced_error(name)):
        es.kmap(RAISING[name], **GEOMETRY, **MODES[mode])(jnp.asarray(X))


OUTSIDE = {
    "absolute": [(3, 0), (-4, 0), (0, 2), (0, -3), (np.array([0, 3]), 0)],
    "relative": [(2, 0), (-2, 0), (0, -1), (0, 2), (slice(-2, None), 0)],
    "named": [("i+2", "j"), ("i", "j-1"), ("i-2", "j+1")],
    "named_absolute": [("i-1", "j"), ("i+3", "j"), ("i", "j+2"), ("i", "j-1")],
}


@pytest.mark.parametrize("whole", [False, True], ids=["taps", "whole_window"])
@pytest.mark.parametrize(
    "mode, key", [(mode, key) for mode, keys in OUTSIDE.items() for key in keys]
)
def test_key_outside_the_window_raises_index_error(mode, key, whole):
    def func(w):
        # With `whole`, `jnp.sum` comes first: the window lowering reads the key.
        return (jnp.sum(w) * 0 if whole else 0) + w[key]

    with pytest.raises(IndexError, match=r"allowed [\s\S]*kernel_size"):
        es.kmap(func, **GEOMETRY, **MODES[mode])(jnp.asarray(X))


@pytest.mark.parametrize(
    "key, error, match",
    [
        (MASK[:2], IndexError, r"boolean[\s\S]*\(2, 2\)"),
        ((0, 0, 0), IndexError, r"3 entries"),
        ((..., 0, ...), IndexError, r"more than one"),
        (True, TypeError, r"True"),
        ([0, 1], TypeError, r"\[0, 1\]"),
        (np.array([0.5]), TypeError, r"0\.5"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_bad_keys_raise(mode, key, error, match):
    with pytest.raises(error, match=match):
        es.kmap(lambda w: w[key], **GEOMETRY, **MODES[mode])(jnp.asarray(X))


@pytest.mark.parametrize("mode", MODES)
def test_traced_key_raises_type_error_with_a_hint(mode):
    def func(w):
        return w[jnp.argmax(w[:, 0]), 0]

    with pytest.raises(TypeError, match=r"traced[\s\S]*jnp\.asarray\(window\)"):
        es.kmap(func, **GEOMETRY, **MODES[mode])(jnp.asarray(X))


def test_swallowing_exceptions_cannot_change_the_shift_lowering():
    def func(w):
        try:
            total = jnp.sum(w)
        except Exception:  # a proxy that raised an Exception would land here
            total = 100.0
        return w[0, 0] + total

    out = es.kmap(func, **GEOMETRY)(jnp.asarray(X))
    expected = reference_kmap(lambda p: p[0, 0] + np.sum(p), X, **GEOMETRY)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
