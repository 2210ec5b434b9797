"""`es.kmap` against the NumPy reference, over random geometries (hypothesis)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from reference import (
    fits,
    geometry,
    pad_array,
    reference_kmap,
    relative_func,
    resolve_kernel,
)

import eqx_stencil as es


MODES = ("constant", "edge", "reflect", "symmetric", "wrap")
PAD_STRINGS = ("same", "valid", "SAME", "Valid", "VALID", "Same")
EXAMPLES = 35


def _padding_dim():
    ints = st.integers(-2, 3)
    return st.one_of(ints, st.tuples(ints, ints), st.sampled_from(PAD_STRINGS))


def _maybe_scalar(draw, values: tuple, *, allow: bool = True):
    """Pass a per-dim tuple, or one value for all dims when they agree."""
    if allow and len(set(values)) == 1 and draw(st.booleans()):
        return values[0]
    return values


@st.composite
def configs(draw, max_rank: int = 3, max_taps: int = 16):
    """A random, valid geometry: shape and the kmap keywords.

    The window has at most `max_taps` taps, so that eager evaluation of the
    window lowering stays fast.
    """
    rank = draw(st.integers(1, max_rank))
    shape, kernels, strides, dilations, paddings = [], [], [], [], []
    taps = 1
    for dim in range(rank):
        budget = max_taps // taps // 2 ** (rank - dim - 1)  # leave some for later
        k = draw(st.sampled_from([-1, *range(1, min(4, max(budget, 1)) + 1)]))
        s = draw(st.integers(1, 3))
        d = draw(st.integers(1, 3))
        p = draw(_padding_dim())
        feasible = [
            n
            for n in range(1, 8)
            if fits((n,), (k,), (s,), (p,), (d,)) and (k != -1 or n <= max(budget, 1))
        ]
        assume(feasible)
        n = draw(st.sampled_from(feasible))
        taps *= n if k == -1 else k
        shape.append(n)
        kernels.append(k)
        strides.append(s)
        dilations.append(d)
        paddings.append(p)
    kernel_size = _maybe_scalar(draw, tuple(kernels))
    strides_arg = _maybe_scalar(draw, tuple(strides))
    dilation_arg = _maybe_scalar(draw, tuple(dilations))
    # A single (lo, hi) pair would read as one entry per dim: keep it wrapped.
    padding = _maybe_scalar(
        draw,
        tuple(paddings),
        allow=not isinstance(paddings[0], tuple),
    )
    boundary = draw(st.sampled_from(MODES))
    cval = draw(st.sampled_from([0, 0.0, 1.5, -2.0, 3]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(
        shape=tuple(shape),
        kwargs=dict(
            kernel_size=kernel_size,
            strides=strides_arg,
            padding=padding,
            dilation=dilation_arg,
            boundary=boundary,
            cval=cval,
        ),
        seed=seed,
    )


def _input(config, dtype=np.float32):
    rng = np.random.default_rng(config["seed"])
    if np.issubdtype(dtype, np.integer):
        return rng.integers(-5, 6, size=config["shape"]).astype(dtype)
    return rng.normal(size=config["shape"]).astype(dtype)


def _kernel(config):
    return resolve_kernel(config["kwargs"]["kernel_size"], config["shape"])


def _check(actual, expected, rtol=1e-5, atol=1e-5):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def _random_taps(draw, kernel, relative, count):
    """`count` random (tap, weight) pairs inside the window."""
    taps = []
    for _ in range(count):
        tap = []
        for k in kernel:
            if relative:
                anchor = (k - 1) // 2
                tap.append(draw(st.integers(-anchor, k - 1 - anchor)))
            else:  # negative indices count from the end, as for an array
                tap.append(draw(st.integers(-k, k - 1)))
        weight = draw(st.floats(-2, 2, allow_nan=False, width=32))
        taps.append((tuple(tap), weight))
    return taps


# --------------------------------------------------------------------------
# The reference itself, against NumPy's sliding windows (so it can be trusted).


@pytest.mark.parametrize("mode", MODES)
def test_reference_matches_sliding_window_view(mode):
    x = np.arange(30.0).reshape(5, 6)
    pads = ((1, 2), (2, 0))
    expected_padded = np.pad(
        x, pads, mode=mode, **({"constant_values": 7.0} if mode == "constant" else {})
    )
    windows = np.lib.stride_tricks.sliding_window_view(expected_padded, (3, 2))
    out = reference_kmap(lambda w: w, x, (3, 2), padding=pads, boundary=mode, cval=7.0)
    np.testing.assert_array_equal(out, windows)
    strided = reference_kmap(
        lambda w: w, x, (3, 2), strides=(2, 3), padding=pads, boundary=mode, cval=7.0
    )
    np.testing.assert_array_equal(strided, windows[::2, ::3])


def test_reference_cropping_and_dilation():
    x = np.arange(10.0)
    assert pad_array(x, [(-2, -3)]).tolist() == [2, 3, 4, 5, 6]
    out = reference_kmap(lambda w: w, x, 3, dilation=2, padding=((-1, 0),))
    np.testing.assert_array_equal(
        out, [[1, 3, 5], [2, 4, 6], [3, 5, 7], [4, 6, 8], [5, 7, 9]]
    )
    same = geometry((7,), 4, dilation=2, padding="same")
    assert same["pads"] == ((3, 3),) and same["out_shape"] == (7,)
    same_even = geometry((7,), 2, padding="SAME")
    assert same_even["pads"] == ((0, 1),) and same_even["out_shape"] == (7,)


# --------------------------------------------------------------------------
# (a) tap indexing (shift lowering), absolute and relative.


@settings(max_examples=EXAMPLES, deadline=None)
@given(config=configs(), relative=st.booleans(), data=st.data())
def test_tap_function_matches_reference(config, relative, data):
    kernel = _kernel(config)
    taps = _random_taps(data.draw, kernel, relative, data.draw(st.integers(1, 4)))
    (first, _), (last, _) = taps[0], taps[-1]

    def func(w):
        total = jnp.sin(w[first]) * w[last]
        for tap, weight in taps:
            total = total + weight * w[tap]
        return total

    def ref(w):
        total = np.sin(w[first]) * w[last]
        for tap, weight in taps:
            total = total + weight * w[tap]
        return total

    x = _input(config)
    stencil = es.kmap(func, relative=relative, **config["kwargs"])
    actual = (jax.jit(stencil) if data.draw(st.booleans(), "jit") else stencil)(x)
    expected = reference_kmap(
        relative_func(ref) if relative else ref, x, **config["kwargs"]
    )
    _check(actual, expected)


# --------------------------------------------------------------------------
# (b) whole-window functions (window lowering).


@settings(max_examples=EXAMPLES, deadline=None)
@given(config=configs(), data=st.data())
def test_window_functions_match_reference(config, data):
    """Five kmaps of one geometry, in one program per example: a weighted sum
    and `max` (window lowering), the window itself (patches, section (c)),
    random relative taps (section (d)), and a weighted sum of a relatively
    indexed window used as a whole, which is in natural order."""
    kernel = _kernel(config)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    weights = rng.normal(size=kernel).astype(np.float32)
    ramp = np.arange(1, np.prod(kernel) + 1, dtype=np.float32).reshape(kernel)
    taps = _random_taps(data.draw, kernel, True, data.draw(st.integers(1, 5)))

    def offsets(w):
        return sum(weight * w[tap] for tap, weight in taps)

    def identity(w):
        return w

    x = _input(config)
    kwargs = config["kwargs"]
    functions = (  # (relative, the JAX function, its NumPy reference)
        (False, lambda w: jnp.sum(w * weights), lambda w: np.sum(w * weights)),
        (False, jnp.max, np.max),
        (False, identity, identity),
        (True, offsets, relative_func(offsets)),
        (True, lambda w: (w * ramp).sum(), lambda w: np.sum(w * ramp)),
    )
    outs = jax.jit(
        lambda x: [
            es.kmap(func, relative=relative, **kwargs)(x)
            for relative, func, _ in functions
        ]
    )(x)
    for (_, func, ref), actual in zip(functions, outs):
        expected = reference_kmap(ref, x, **kwargs)
        if func is identity:  # patches are copies: exact
            _check(actual, expected, rtol=0, atol=0)
        else:
            _check(actual, expected)


def test_reduction_of_relative_window_matches_reference():
    """`jnp.max` of a relatively indexed window works as for a plain window."""
    x = np.array([3.0, -1.0, 4.0, 1.0, -5.0, 9.0, 2.0], np.float32)
    kwargs = dict(kernel_size=3, padding="same", boundary="edge")
    actual = es.kmap(jnp.max, relative=True, **kwargs)(x)
    _check(actual, reference_kmap(np.max, x, **kwargs))


WINDOW_FUNCTIONS = {  # name: (the JAX function, its NumPy reference)
    "mean": (jnp.mean, np.mean),
    "var": (jnp.var, np.var),
    "median": (jnp.median, np.median),
    "argmax": (jnp.argmax, np.argmax),
    "sort": (lambda w: jnp.sort(w.ravel())[1], lambda w: np.sort(w.ravel())[1]),
    "cumsum": (
        lambda w: jnp.cumsum(w.ravel())[-2],
        lambda w: np.cumsum(w.ravel())[-2],
    ),
    "where": (
        lambda w: jnp.sum(jnp.where(w > 0, w, 0.5 * w)),
        lambda w: np.sum(np.where(w > 0, w, 0.5 * w)),
    ),
    "matmul": (
        lambda w: w.ravel() @ jnp.arange(w.size, dtype=w.dtype),
        lambda w: w.ravel() @ np.arange(w.size, dtype=w.dtype),
    ),
    "norm": (jnp.linalg.norm, np.linalg.norm),
    "centered": (
        lambda w: jnp.sum((w - jnp.max(w)) ** 2),
        lambda w: np.sum((w - np.max(w)) ** 2),
    ),
    "minus_mean": (
        lambda w: jnp.sum(jnp.abs(w - jnp.mean(w))),
        lambda w: np.sum(np.abs(w - np.mean(w))),
    ),
    "logsumexp": (
        jax.nn.logsumexp,
        lambda w: np.max(w) + np.log(np.sum(np.exp(w - np.max(w)))),
    ),
    "softmax": (
        lambda w: jax.nn.softmax(w.ravel())[0],
        lambda w: np.exp(w.ravel()[0]) / np.sum(np.exp(w.ravel())),
    ),
    "normalize": (
        lambda w: (w / jnp.sum(jnp.abs(w)))[(0,) * w.ndim],
        lambda w: (w / np.sum(np.abs(w)))[(0,) * w.ndim],
    ),
}


# The functions without exact plane rules: the unrolled lowering leaves their
# windows to `vmap`.
VMAP_LOWERED = ("median", "argmax", "sort", "cumsum")


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        # 1d: every function is the 2d case's; 1-D windows and reflect are
        # the hypothesis tests' (test_window_functions_match_reference, ...).
        pytest.param(
            (7,),
            dict(kernel_size=3, padding="same", boundary="reflect"),
            marks=pytest.mark.thorough,
        ),
        # 2d: a corner box and boundary strips on both sides (padding below
        # in dim 0, above in dim 1): four boxes (padding 1 on every side would
        # make six, half as much program again, for no other window)
        (
            (5, 6),
            dict(
                kernel_size=(2, 3),
                strides=(2, 1),
                padding=((1, 0), (0, 1)),
                boundary="wrap",
            ),
        ),
    ],
    ids=["1d", "2d"],
)
def test_whole_window_functions_match_reference(shape, kwargs, unroll_applied):
    """Common whole-window functions (reductions broadcast back, sorts, ...).

    Two kmaps with a dict output in one program (one compile): the functions
    the unrolled lowering computes, and those it leaves to `vmap`, so that
    each function takes the lowering it takes alone (checked here), at half
    the program of a kmap per function. Each against the NumPy reference of
    the function."""
    applied = unroll_applied
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    # Each of VMAP_LOWERED falls back to `vmap` on its own (a trace, of the
    # same window without padding: one box).
    for name in VMAP_LOWERED:
        applied.clear()
        alone = es.kmap(WINDOW_FUNCTIONS[name][0], kernel_size=kwargs["kernel_size"])
        jax.eval_shape(alone, x)
        assert applied and not any(applied), name
    groups = {
        "vmap": VMAP_LOWERED,
        "unrolled": [name for name in WINDOW_FUNCTIONS if name not in VMAP_LOWERED],
    }
    lowerings = {}

    def apply_groups(x):
        outs = {}
        for kind, names in groups.items():
            applied.clear()
            outs.update(
                es.kmap(
                    lambda w, names=names: {
                        name: WINDOW_FUNCTIONS[name][0](w) for name in names
                    },
                    **kwargs,
                )(x)
            )
            lowerings[kind] = list(applied)
        return outs

    outs = jax.jit(apply_groups)(x)
    assert lowerings["unrolled"] and all(lowerings["unrolled"])
    assert lowerings["vmap"] and not any(lowerings["vmap"])
    assert sorted(outs) == sorted(WINDOW_FUNCTIONS)
    for name, actual in outs.items():
        ref = WINDOW_FUNCTIONS[name][1]
        expected = reference_kmap(ref, x.astype(np.float64), **kwargs)
        try:
            _check(actual, expected)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


def test_python_scalar_result_of_whole_window_function():
    """A whole-window function may return a Python number (here the tap count)."""
    x = np.arange(6.0, dtype=np.float32)
    actual = es.kmap(lambda w: w.size, kernel_size=3, padding="same")(x)
    np.testing.assert_array_equal(actual, np.full(6, 3))


def test_constant_function_after_a_patches_stencil():
    """The plan chosen for a stencil must not depend on earlier stencils."""
    x = jnp.asarray(np.arange(4.0, dtype=np.float32))
    np.testing.assert_array_equal(
        es.kmap(lambda w: w, kernel_size=2)(x), [[0, 1], [1, 2], [2, 3]]
    )
    np.testing.assert_array_equal(
        es.kmap(lambda w: 1.0, kernel_size=2)(x), np.ones(3, np.float32)
    )


# --------------------------------------------------------------------------
# (c) array outputs: patches.


# (test_window_functions_match_reference checks patches.)


@settings(max_examples=15, deadline=None)
@given(config=configs(max_rank=2))
def test_vector_outputs_match_reference(config):
    """A function returning a small vector of taps and reductions (window
    lowering), and tap indexing that returns a stack of taps per window
    (shift lowering), in one program per example."""
    x = _input(config)
    last = tuple(-1 for _ in config["shape"])
    first = tuple(0 for _ in config["shape"])
    kwargs = config["kwargs"]
    reduced, taps = jax.jit(
        lambda x: (
            es.kmap(
                lambda w: jnp.stack([jnp.min(w), jnp.mean(w), w.ravel()[0]]), **kwargs
            )(x),
            es.kmap(lambda w: jnp.stack([w[first], 2 * w[last]]), **kwargs)(x),
        )
    )(x)
    expected = reference_kmap(
        lambda w: np.stack([np.min(w), np.mean(w), w.ravel()[0]]), x, **kwargs
    )
    _check(reduced, expected)
    expected = reference_kmap(lambda w: np.stack([w[first], 2 * w[last]]), x, **kwargs)
    _check(taps, expected)


def test_relative_patches_are_in_natural_order():
    x = np.arange(6.0, dtype=np.float32)
    kwargs = dict(kernel_size=3, padding=1, boundary="wrap")
    actual = es.kmap(lambda w: w, relative=True, **kwargs)(x)
    _check(actual, reference_kmap(lambda w: w, x, **kwargs), rtol=0, atol=0)


# --------------------------------------------------------------------------
# (d) relative indexing with random in-range offsets.


# (test_window_functions_match_reference checks random relative offsets.)


def test_relative_anchor_is_center_for_odd_and_left_center_for_even():
    x = np.arange(10.0, dtype=np.float32)
    sizes = (1, 2, 3, 4, 5)
    outs = jax.jit(  # one program: one compile
        lambda x: [
            es.kmap(lambda w: w[0], kernel_size=k, relative=True)(x) for k in sizes
        ]
    )(x)
    for k, actual in zip(sizes, outs):
        anchor = (k - 1) // 2
        expected = reference_kmap(lambda w, a=anchor: w[a], x, k)
        _check(actual, expected, rtol=0, atol=0)


# --------------------------------------------------------------------------
# (e) named_axis: full naming (any key order) and partial naming.

NAMES = ("i", "j", "k")


def _named_key(name: str, offset: int) -> str:
    if offset == 0:
        return name
    return f"{name}{'+' if offset > 0 else '-'}{abs(offset)}"


@settings(max_examples=20, deadline=None)
@given(config=configs(), data=st.data())
def test_named_axis_matches_reference(config, data):
    """Full naming (keys in any order) and partial naming (named dims may
    still take ints) of one geometry, in one program per example."""
    kernel = _kernel(config)
    rank = len(kernel)
    names = data.draw(st.permutations(NAMES[:rank]))
    full_axis = dict(enumerate(names))
    full_taps = _random_taps(data.draw, kernel, True, data.draw(st.integers(1, 4)))
    full_keys = []
    for tap, weight in full_taps:
        order = data.draw(st.permutations(range(rank)))  # keys in any order
        key = tuple(_named_key(names[dim], tap[dim]) for dim in order)
        full_keys.append((key, weight))

    named_dims = data.draw(st.sets(st.integers(0, rank - 1), min_size=1, max_size=rank))
    partial_axis = {dim: NAMES[dim] for dim in sorted(named_dims)}
    partial_taps = _random_taps(data.draw, kernel, True, data.draw(st.integers(1, 4)))
    partial_keys = []
    for tap, weight in partial_taps:
        # Named dims may still be indexed by int; strings stand at their dim.
        key = tuple(
            _named_key(NAMES[dim], offset)
            if dim in named_dims and data.draw(st.booleans())
            else offset
            for dim, offset in enumerate(tap)
        )
        partial_keys.append((key, weight))

    def weighted(keys):
        return lambda w: sum(weight * w[key] for key, weight in keys)

    x = _input(config)
    kwargs = config["kwargs"]
    full, partial = jax.jit(
        lambda x: (
            es.kmap(weighted(full_keys), relative=True, named_axis=full_axis, **kwargs)(
                x
            ),
            es.kmap(
                weighted(partial_keys), relative=True, named_axis=partial_axis, **kwargs
            )(x),
        )
    )(x)
    for actual, taps in ((full, full_taps), (partial, partial_taps)):
        expected = reference_kmap(relative_func(weighted(taps)), x, **kwargs)
        _check(actual, expected)


def test_named_axis_kernex_examples():
    """`x["j+1", "i"]` (full naming, any order) and `x["i+1", -1]` (partial)."""
    x = np.arange(20.0, dtype=np.float32).reshape(4, 5)
    kwargs = dict(kernel_size=3, padding="same", boundary="symmetric")
    full_stencil = es.kmap(
        lambda w: w["j+1", "i"] - w["i-1", "j"],
        relative=True,
        named_axis={0: "i", 1: "j"},
        **kwargs,
    )
    partial_stencil = es.kmap(
        lambda w: w["i+1", -1] + 10 * w[0, 1],
        relative=True,
        named_axis={0: "i"},
        **kwargs,
    )
    full, partial = jax.jit(lambda x: (full_stencil(x), partial_stencil(x)))(x)
    expected = reference_kmap(relative_func(lambda w: w[0, 1] - w[-1, 0]), x, **kwargs)
    _check(full, expected)
    expected = reference_kmap(
        relative_func(lambda w: w[1, -1] + 10 * w[0, 1]), x, **kwargs
    )
    _check(partial, expected)


# --------------------------------------------------------------------------
# dtypes.


@settings(max_examples=12, deadline=None)
@given(config=configs(max_rank=2), data=st.data())
def test_int_input_stays_int(config, data):
    kernel = _kernel(config)
    config["kwargs"]["cval"] = 2  # an int fill keeps the data integral
    taps = _random_taps(data.draw, kernel, False, 2)
    (t0, _), (t1, _) = taps
    x = _input(config, np.int32)
    shift, window, patches = jax.jit(  # one program: one compile per example
        lambda x: tuple(
            es.kmap(func, **config["kwargs"])(x)
            for func in (
                lambda w: 3 * w[t0] - w[t1],
                lambda w: jnp.sum(w * 2),
                lambda w: w,
            )
        )
    )(x)
    for out in (shift, window, patches):
        assert jnp.issubdtype(out.dtype, jnp.integer), out.dtype
    np.testing.assert_array_equal(
        shift, reference_kmap(lambda w: 3 * w[t0] - w[t1], x, **config["kwargs"])
    )
    np.testing.assert_array_equal(
        window, reference_kmap(lambda w: np.sum(w * 2), x, **config["kwargs"])
    )
    np.testing.assert_array_equal(
        patches, reference_kmap(lambda w: w, x, **config["kwargs"])
    )


def test_float_dtypes_are_kept():
    dtypes = (jnp.float32, jnp.bfloat16, jnp.float16)
    xs = [np.arange(6.0).astype(dtype) for dtype in dtypes]
    outs = jax.jit(  # one program: one compile
        lambda xs: [
            (
                es.kmap(lambda w: w[0] + w[1], kernel_size=2)(x),
                es.kmap(jnp.mean, kernel_size=2)(x),
            )
            for x in xs
        ]
    )(xs)
    for dtype, (taps, mean) in zip(dtypes, outs):
        assert taps.dtype == dtype and mean.dtype == dtype, (dtype, taps, mean)


def test_bool_input_with_logical_function():
    x = np.array([True, False, True, True, False, False, True])
    actual = es.kmap(lambda w: w[0] & w[1], kernel_size=2)(x)
    assert actual.dtype == jnp.bool_
    expected = reference_kmap(lambda w: w[0] & w[1], x, 2)
    np.testing.assert_array_equal(actual, expected)
