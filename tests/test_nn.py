"""`eqx_stencil.nn` against its `eqx.nn` counterparts (weights copied with
`eqx.tree_at`), NumPy loop references, hand-written slicing, transforms,
gradients and argument errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from jax.test_util import check_grads
from lowerings import recorded_forms

import eqx_stencil as es
import eqx_stencil.nn as enn


MODES = ("ZEROS", "REFLECT", "REPLICATE", "CIRCULAR")
NP_MODES = {"ZEROS": "constant", "REFLECT": "reflect", "REPLICATE": "edge"}
NP_MODES["CIRCULAR"] = "wrap"
TOL = dict(rtol=2e-5, atol=2e-5)


def _normal(shape, seed=0):
    """Standard normal float32 input drawn with NumPy, kept a NumPy array (an
    eager `jax.random` draw, and even `jnp.asarray`, compiles a program per new
    shape; jitted functions take NumPy arrays as they are)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _copy_params(ours, theirs):
    """`ours` with the arrays of `theirs` (same field names and shapes)."""
    if getattr(theirs, "bias", None) is None:
        return eqx.tree_at(lambda m: m.weight, ours, theirs.weight)
    return eqx.tree_at(lambda m: (m.weight, m.bias), ours, (theirs.weight, theirs.bias))


@eqx.filter_jit
def _apply(layer, x):
    """`layer(x)`, compiled (much faster on CPU than eager evaluation)."""
    return layer(x)


@eqx.filter_jit
def _apply_all(layers, x):
    """`[layer(x) for layer in layers]` as one compiled program."""
    return [layer(x) for layer in layers]


@eqx.filter_jit
def _apply_each(layers, xs):
    """`[layer(x) for layer, x in zip(layers, xs)]` as one compiled program
    (one compilation for the cases of a test instead of one per case)."""
    return [layer(x) for layer, x in zip(layers, xs)]


def _close(actual, expected, **tol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, **(tol or TOL))


# --------------------------------------------------------------------------
# Conv equals eqx.nn.Conv.


@st.composite
def conv_configs(draw):
    """A random valid eqx.nn.Conv configuration and input shape."""
    n = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    max_k = {1: 4, 2: 3, 3: 2}[n]
    kernel = tuple(draw(st.integers(1, max_k)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    mode = draw(st.sampled_from(MODES))
    kind = draw(st.sampled_from(["int", "ints", "pairs", "SAME", "SAME_LOWER", "same"]))
    if kind in ("SAME", "SAME_LOWER", "same", "valid"):
        padding = kind
    else:  # negative padding crops (lax's meaning; eqx.nn pads other modes)
        pad = st.integers(-1 if mode == "ZEROS" else 0, 2)
        if kind == "int":
            padding = draw(pad)
        elif kind == "ints":
            padding = tuple(draw(pad) for _ in range(n))
        else:
            padding = tuple((draw(pad), draw(pad)) for _ in range(n))
    spatial = tuple(draw(st.integers(3, {1: 9, 2: 7, 3: 5}[n])) for _ in range(n))
    # Output non-empty; reflect needs padding < size (as jnp.pad).
    spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    if isinstance(padding, int):
        pads = [(padding, padding)] * n
    elif isinstance(padding, tuple):
        pads = [p if isinstance(p, tuple) else (p, p) for p in padding]
    else:
        pads = [(s, s) for s in spans]  # an upper bound for SAME
    assume(all(n_ + lo + hi >= s for n_, (lo, hi), s in zip(spatial, pads, spans)))
    if mode == "REFLECT":
        assume(all(max(lo, hi) < n_ for n_, (lo, hi) in zip(spatial, pads)))
    kwargs = dict(
        kernel_size=kernel
        if draw(st.booleans()) or len(set(kernel)) > 1
        else kernel[0],
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        use_bias=draw(st.booleans()),
        padding_mode=mode,
    )
    return n, c_in, c_out, kwargs, (c_in, *spatial), draw(st.integers(0, 2**16))


def _uninitialised(cls, *args, **kwargs):
    """`cls(*args, key=..., **kwargs)` with shapes for arrays: its initialiser
    is not run (it compiles a random-number program per new shape, ~1 s;
    `test_conv_same_fields_shapes_and_initialisation` checks it)."""
    return eqx.filter_eval_shape(cls, *args, key=jax.random.PRNGKey(0), **kwargs)


def _with_params(module, seed=0, lim=1.0):
    """`module` (from `_uninitialised`) with its weight and bias drawn uniformly
    in [-lim, lim) by NumPy (real and imaginary parts for complex dtypes)."""
    rng = np.random.default_rng(seed)

    def draw(leaf):
        values = rng.uniform(-lim, lim, leaf.shape)
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            values = values + 1j * rng.uniform(-lim, lim, leaf.shape)
        # `device_put` compiles nothing (`jnp.asarray` does, per new shape).
        return jax.device_put(values.astype(leaf.dtype))

    fields = [f for f in ("weight", "bias") if getattr(module, f, None) is not None]
    arrays = [draw(getattr(module, f)) for f in fields]
    return eqx.tree_at(lambda m: [getattr(m, f) for f in fields], module, arrays)


def _conv_pair(n, c_in, c_out, seed=0, lim=1.0, **kwargs):
    """(ours, theirs): `enn.Conv` and `eqx.nn.Conv` with the same NumPy weights."""
    theirs = _with_params(
        _uninitialised(eqx.nn.Conv, n, c_in, c_out, **kwargs), seed, lim
    )
    return _copy_params(
        _uninitialised(enn.Conv, n, c_in, c_out, **kwargs), theirs
    ), theirs


@settings(max_examples=40, deadline=None)
@given(conv_configs())
def test_conv_equals_eqx_conv(config):
    n, c_in, c_out, kwargs, shape, seed = config
    ours, theirs = _conv_pair(n, c_in, c_out, seed, **kwargs)
    x = _normal(shape, seed)
    _close(*_apply_all((ours, theirs), x))


def test_conv_same_fields_shapes_and_initialisation():
    """Conv1d, Conv2d and Conv3d: the fields, shapes and initial weights of
    eqx.nn's."""
    kwargs = dict(kernel_size=3, stride=2, padding="same", groups=2, dtype=jnp.float32)

    @eqx.filter_jit  # both initialisations of every rank in one program
    def build(key):
        return [
            (
                getattr(enn, f"Conv{n}d")(4, 6, key=key, **kwargs),
                getattr(eqx.nn, f"Conv{n}d")(4, 6, key=key, **kwargs),
            )
            for n in (1, 2, 3)
        ]

    for n, (ours, theirs) in zip((1, 2, 3), build(jax.random.PRNGKey(3))):
        assert isinstance(ours, getattr(enn, f"Conv{n}d")), n
        assert isinstance(ours, enn.Conv) and ours.num_spatial_dims == n
        for field in vars(theirs):
            assert np.shape(getattr(ours, field)) == np.shape(getattr(theirs, field))
            if isinstance(getattr(theirs, field), jax.Array):
                # The same key gives the same weights: eqx.nn's initialisation.
                _close(getattr(ours, field), getattr(theirs, field), rtol=0, atol=0)
            else:
                assert getattr(ours, field) == getattr(theirs, field), (n, field)
        assert [leaf.shape for leaf in jax.tree_util.tree_leaves(ours)] == [
            leaf.shape for leaf in jax.tree_util.tree_leaves(theirs)
        ]


def test_conv_large_kernel_and_channels():
    """A realistic layer: 5x5, 16 -> 32 channels, stride 2, 'SAME'."""
    ours, theirs = _conv_pair(
        2, 16, 32, lim=0.05, kernel_size=5, stride=2, padding="SAME"
    )
    x = _normal((16, 33, 30))
    _close(*_apply_all((ours, theirs), x), rtol=1e-4, atol=1e-4)


def test_conv_depthwise():
    kwargs = dict(kernel_size=3, padding=1, groups=8, padding_mode="CIRCULAR")
    ours, theirs = _conv_pair(2, 8, 16, **kwargs)
    x = _normal((8, 10, 12))
    _close(*_apply_all((ours, theirs), x))


def test_conv_complex():
    # A 2x2 kernel: a complex layer keeps the slices (one product per tap and
    # output channel), which compile 3x faster than a 3x3 kernel's.
    kwargs = dict(kernel_size=2, padding="same", dtype=jnp.complex64)

    @eqx.filter_jit  # both complex initialisations and outputs in one program
    def run(key, x):
        ours = enn.Conv2d(2, 3, key=key, **kwargs)
        theirs = eqx.nn.Conv2d(2, 3, key=key, **kwargs)
        return ours, theirs, ours(x), theirs(x)

    x = (_normal((2, 6, 7)) + 1j * _normal((2, 6, 7), seed=1)).astype(np.complex64)
    ours, theirs, out, expected = run(jax.random.PRNGKey(0), x)
    assert ours.weight.dtype == jnp.complex64
    _close(ours.weight, theirs.weight, rtol=0, atol=0)  # the same initialisation
    _close(ours.bias, theirs.bias, rtol=0, atol=0)
    assert out.dtype == jnp.complex64
    _close(out, expected)


@pytest.mark.parametrize(
    "n, groups, convolutions",
    [(1, 1, 1), (2, 1, 1), (3, 1, 1), (2, 2, 0)],
    ids=["dense1d", "dense2d", "dense3d", "grouped2d"],
)
def test_few_channels_lower_to_one_convolution_unless_grouped(n, groups, convolutions):
    """At most 16 taps times 2 outputs: below kmap's threshold, yet a dense
    layer of any rank is one convolution (its gradient compiles as fast as
    `eqx.nn.Conv`'s); a grouped one keeps the slices (XLA gathers a
    batch-sharded grouped convolution). A 2-wide kernel: the grouped layer's
    sliced gradient compiles 2x faster than with a 3-wide one."""
    layer = _with_params(_uninitialised(enn.Conv, n, 2, 2, 2, padding=1, groups=groups))
    params, static = eqx.partition(layer, eqx.is_array)

    def loss(params, x):
        return jnp.sum(jnp.sin(jax.vmap(eqx.combine(params, static))(x)))

    x = _normal((4, 2) + (6,) * n)
    program = jax.jit(jax.grad(loss)).lower(params, x).compile().as_text()
    assert program.count(" convolution(") == 2 * convolutions  # forward, weight grad


def test_conv_wrong_weights_disagree():
    """The comparison can fail: a perturbed weight is caught."""
    ours, theirs = _conv_pair(2, 2, 3, kernel_size=3)
    _close(*_apply_all((ours, theirs), _normal((2, 6, 6))))  # equal unperturbed
    ours = eqx.tree_at(lambda m: m.weight, ours, ours.weight.at[1, 0, 2, 1].add(0.1))
    with pytest.raises(AssertionError):
        _close(*_apply_all((ours, theirs), _normal((2, 6, 6))))


# --------------------------------------------------------------------------
# Pools equal eqx.nn's.


@st.composite
def pool_configs(draw):
    n = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    if draw(st.booleans()):
        padding = tuple(
            (draw(st.integers(0, k)), draw(st.integers(0, k))) for k in kernel
        )
    else:
        padding = tuple(draw(st.integers(0, k)) for k in kernel)
    spatial = tuple(draw(st.integers(3, {1: 9, 2: 7, 3: 5}[n])) for _ in range(n))
    kwargs = dict(
        kernel_size=kernel,
        stride=stride if draw(st.booleans()) or len(set(stride)) > 1 else stride[0],
        padding=padding,
        use_ceil=draw(st.booleans()),
    )
    return n, kwargs, (2, *spatial), draw(st.integers(0, 2**16))


@settings(max_examples=30, deadline=None)
@given(pool_configs(), st.sampled_from(["Max", "Avg"]))
def test_pool_equals_eqx_pool(config, kind):
    n, kwargs, shape, seed = config
    theirs = getattr(eqx.nn, f"{kind}Pool{n}d")(**kwargs)
    ours = getattr(enn, f"{kind}Pool{n}d")(**kwargs)
    generic = getattr(enn, f"{kind}Pool")(n, **kwargs)
    x = _normal(shape, seed)
    try:
        eqx.filter_eval_shape(theirs, x)  # traces eqx.nn's checks, compiles nothing
    except RuntimeError as error:  # use_ceil made the padding exceed the kernel
        assert "Paddings should be less than the size of the kernel" in str(error)
        with pytest.raises(ValueError, match=r"use_ceil=True[\s\S]*kernel_size"):
            ours(jax.device_put(x))  # eager: a JAX array, as its annotation
        return
    out, out_generic, expected = _apply_all((ours, generic, theirs), x)
    _close(out, expected)
    _close(out_generic, expected)


@pytest.mark.parametrize(
    # [3]: breadth; the first-maximal-tap rule is checked fast by [1] and [2]
    "n",
    [1, 2, pytest.param(3, marks=pytest.mark.thorough)],
)
def test_max_pool_grads_at_ties_equal_eqx(n):
    """At ties the gradient goes to the first maximal tap, as eqx.nn's."""
    kwargs = dict(kernel_size=3, stride=2, padding=1)
    ours = getattr(enn, f"MaxPool{n}d")(**kwargs)
    theirs = getattr(eqx.nn, f"MaxPool{n}d")(**kwargs)
    rng = np.random.default_rng(n)
    x = rng.integers(0, 2, (2,) + (6,) * n).astype(np.float32)  # many ties
    # integer weights: the gradient sums are exact, whatever their order
    weights = rng.integers(1, 10, jax.eval_shape(theirs, x).shape).astype(np.float32)

    @eqx.filter_jit  # both gradients in one program
    def grads(x, pools):
        grad = jax.grad(lambda x, pool: jnp.sum(weights * pool(x)))
        return [grad(x, pool) for pool in pools]

    _close(*grads(x, (ours, theirs)), rtol=0, atol=0)


def test_max_pool_integer_input():
    x = np.arange(-20, 16, dtype=np.int32).reshape(1, 6, 6)
    ours = enn.MaxPool2d(3, stride=2, padding=1)
    theirs = eqx.nn.MaxPool2d(3, stride=2, padding=1)
    out, expected = eqx.filter_jit(lambda x: (ours(x), theirs(x.astype(jnp.float32))))(
        x
    )
    assert out.dtype == jnp.int32
    _close(out, expected)


# --------------------------------------------------------------------------
# AverageBlur: NumPy loops and eqx.nn's depthwise convolution.


def reference_blur(x, kernel, mode):
    """Mean over the window around each position, 'same' padding, by loops."""
    x = np.asarray(x, np.float64)
    pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in kernel]
    padded = np.pad(x, pads, mode=NP_MODES[mode])
    out = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        c, *pos = index
        window = padded[(c, *(slice(p, p + k) for p, k in zip(pos, kernel)))]
        out[index] = window.mean()
    return out


BLUR_CASES = [  # kernel, input shape, padding mode
    ((3,), (2, 9), "ZEROS"),
    ((4,), (1, 7), "REFLECT"),
    ((3, 3), (3, 6, 7), "ZEROS"),
    ((5, 2), (2, 8, 6), "REPLICATE"),
    ((1, 4), (1, 5, 6), "CIRCULAR"),
    ((2, 3, 3), (2, 4, 5, 6), "ZEROS"),
]


def test_average_blur_equals_numpy_loops():
    """Every case of `BLUR_CASES`, the blurs computed by one program."""
    blurs = [
        enn.AverageBlur(shape[0], kernel, padding_mode=mode)
        for kernel, shape, mode in BLUR_CASES
    ]
    xs = [_normal(shape) for _, shape, _ in BLUR_CASES]
    for case, x, out in zip(BLUR_CASES, xs, _apply_each(blurs, xs)):
        kernel, _, mode = case
        _close(out, reference_blur(x, kernel, mode), **TOL, err_msg=str(case))


def test_average_blur_equals_depthwise_conv_and_takes_images():
    blur = enn.AverageBlur(in_channels=4, kernel_size=(7, 7))
    conv = _uninitialised(
        eqx.nn.Conv2d, 4, 4, 7, padding="SAME", groups=4, use_bias=False
    )
    conv = eqx.tree_at(
        lambda m: m.weight, conv, np.full((4, 1, 7, 7), 1 / 49, np.float32)
    )
    x = np.random.default_rng(1).integers(0, 256, (4, 20, 24)).astype(np.uint8)
    # uint8 images as in kernex's AverageBlurLayer
    out, expected = eqx.filter_jit(lambda x: (blur(x), conv(x.astype(jnp.float32))))(x)
    assert out.dtype == jnp.float32 and out.shape == x.shape
    _close(out, expected, rtol=1e-5, atol=1e-3)
    assert enn.AverageBlur(2, 3).kernel_size == (3, 3)  # an int: 2-D


# --------------------------------------------------------------------------
# FiniteDifference: hand-written slicing.


def test_laplacian_5_equals_hand_slicing():
    h = 0.25
    u = _normal((2, 9, 11))
    lap = enn.FiniteDifference("laplacian_5", spacing=h)
    p = np.pad(np.asarray(u), ((0, 0), (1, 1), (1, 1)))  # NumPy: no op compiles
    expected = (
        p[:, 2:, 1:-1] + p[:, :-2, 1:-1] + p[:, 1:-1, 2:] + p[:, 1:-1, :-2] - 4 * u
    ) / h**2
    _close(_apply(lap, u), expected, rtol=1e-5, atol=1e-4)


def test_laplacian_5_periodic_anisotropic_equals_rolls():
    hx, hy = 0.5, 2.0
    u = _normal((1, 8, 6))
    lap = enn.FiniteDifference("laplacian_5", spacing=(hx, hy), padding_mode="circular")
    u = np.asarray(u)
    roll = np.roll
    expected = (roll(u, 1, 1) - 2 * u + roll(u, -1, 1)) / hx**2 + (
        roll(u, 1, 2) - 2 * u + roll(u, -1, 2)
    ) / hy**2
    _close(_apply(lap, u), expected, rtol=1e-5, atol=1e-4)


SCHEME_CASES = [  # scheme, axis, input shape
    ("laplacian_3", 0, (2, 12)),
    ("central_1d", 0, (2, 12)),
    ("central_2d", 0, (1, 7, 8)),
    ("central_2d", -1, (1, 7, 8)),
    ("laplacian_9", 0, (1, 7, 8)),
    ("laplacian_7", 0, (1, 5, 6, 7)),
    ("central_3d", 2, (1, 5, 6, 7)),
]


def _hand_sliced(scheme, axis, u, h):
    """`scheme`'s finite difference of `u` (zero outside) by NumPy slicing."""
    shape = u.shape
    n = len(shape) - 1
    p = np.pad(np.asarray(u), [(0, 0)] + [(1, 1)] * n)

    def at(*offset):  # u shifted: value at position + offset
        return p[
            (slice(None), *(slice(1 + o, 1 + o + s) for o, s in zip(offset, shape[1:])))
        ]

    def unit(dim, o):
        return tuple(o if d == dim else 0 for d in range(n))

    zero = (0,) * n
    a = axis % n
    if scheme.startswith("central"):
        expected = (at(*unit(a, 1)) - at(*unit(a, -1))) / (2 * h)
    elif scheme == "laplacian_9":
        edges = sum(at(*unit(d, o)) for d in range(2) for o in (-1, 1))
        corners = sum(at(i, j) for i in (-1, 1) for j in (-1, 1))
        expected = (4 * edges + corners - 20 * at(*zero)) / (6 * h**2)
    else:
        expected = (
            sum(at(*unit(d, 1)) + at(*unit(d, -1)) - 2 * at(*zero) for d in range(n))
            / h**2
        )
    return expected


def test_schemes_equal_hand_slicing():
    """Every case of `SCHEME_CASES`, the layers computed by one program."""
    h = 0.5
    layers = [enn.FiniteDifference(s, spacing=h, axis=a) for s, a, _ in SCHEME_CASES]
    us = [_normal(shape) for _, _, shape in SCHEME_CASES]
    for case, layer, u, out in zip(SCHEME_CASES, layers, us, _apply_each(layers, us)):
        scheme, axis, shape = case
        assert layer.weight.shape == (3,) * (len(shape) - 1), case
        expected = _hand_sliced(scheme, axis, u, h)
        _close(out, expected, rtol=1e-5, atol=1e-4, err_msg=str(case))


def test_laplacian_is_exact_for_quadratics_inside():
    h = 0.1
    grid = np.arange(12) * h
    u = 3 * grid[:, None] ** 2 - grid[None, :] ** 2 + grid[:, None] * grid[None, :]
    layers = [
        enn.FiniteDifference(s, spacing=h) for s in ("laplacian_5", "laplacian_9")
    ]
    for out in _apply_all(layers, u[None].astype(np.float32)):
        out = out[0, 1:-1, 1:-1]
        _close(out, np.full(out.shape, 4.0), rtol=1e-3, atol=1e-3)


def test_finite_difference_taps_are_learnable():
    """Gradients w.r.t. the taps equal those of eqx.nn's depthwise conv with the
    same taps, and a few descent steps fit a target operator."""
    u = _normal((3, 10, 10))
    layer = enn.FiniteDifference("laplacian_5", padding_mode="replicate")
    conv = _uninitialised(
        eqx.nn.Conv2d, 3, 3, 3, padding=1, groups=3, use_bias=False,
        padding_mode="REPLICATE",
    )  # fmt: skip
    target_layer = enn.FiniteDifference("central_2d", axis=1, padding_mode="replicate")

    @eqx.filter_jit  # gradients, 50 descent steps and losses: one program
    def run(layer, u):
        target = target_layer(u)

        def loss(layer):
            return jnp.mean((layer(u) - target) ** 2)

        def conv_loss(w):
            conv_w = eqx.tree_at(
                lambda m: m.weight, conv, jnp.broadcast_to(w, (3, 1, 3, 3))
            )
            return jnp.mean((conv_w(u) - target) ** 2)

        def step(w, _):
            value, grads = eqx.filter_value_and_grad(loss)(
                eqx.tree_at(lambda m: m.weight, layer, w)
            )
            return w - 0.05 * grads.weight, (value, grads.weight)

        # The loss and its gradient at the initial taps and after each of 50
        # steps (a 51st step is not used): the layer's gradient is compiled
        # once (its slices' transposes compile slowly).
        _, (losses, grads) = jax.lax.scan(step, layer.weight, length=51)
        return grads[0], jax.grad(conv_loss)(layer.weight), losses[0], losses[50]

    grads, conv_grads, start, end = run(layer, u)
    _close(grads, conv_grads, rtol=1e-4, atol=1e-5)
    assert end < 0.1 * start


# --------------------------------------------------------------------------
# Sequential, vmap, grads.


def _pair_of_models(seed):
    """The same small CNN from eqx.nn and from eqx_stencil.nn, same weights."""

    def build(nn):
        return eqx.nn.Sequential(
            [
                _uninitialised(nn.Conv2d, 3, 8, 3, padding="same"),
                eqx.nn.Lambda(jax.nn.relu),
                nn.MaxPool2d(2, stride=2),
                _uninitialised(
                    nn.Conv2d, 8, 4, 3, stride=2, padding=1, padding_mode="REFLECT"
                ),
                nn.AvgPool2d(2, stride=1, padding=1),
            ]
        )

    theirs, ours = build(eqx.nn), build(enn)
    for index in (0, 3):
        params = _with_params(theirs.layers[index], seed + index, lim=0.3)
        ours, theirs = (
            eqx.tree_at(
                lambda m, i=index: (m.layers[i].weight, m.layers[i].bias),
                model,
                (params.weight, params.bias),
            )
            for model in (ours, theirs)
        )
    return ours, theirs


def test_sequential_and_vmap_equal_eqx():
    ours, theirs = _pair_of_models(0)
    xs = _normal((3, 3, 8, 6))

    @eqx.filter_jit  # all five evaluations in one program
    def run(ours, theirs, xs):
        return (
            jax.vmap(theirs)(xs),
            jax.vmap(ours)(xs),
            eqx.filter_vmap(ours)(xs),
            ours(xs[1]),
            ours(xs[0], key=jax.random.PRNGKey(1)),  # accepted and ignored, as eqx.nn
        )

    expected, vmapped, filter_vmapped, single, keyed = run(ours, theirs, xs)
    assert expected.shape == (3, 4, 3, 3)
    _close(vmapped, expected)
    _close(filter_vmapped, expected)
    _close(single, expected[1])
    _close(keyed, expected[0])


def test_filter_grad_equals_eqx_grads():
    ours, theirs = _pair_of_models(1)
    xs = _normal((2, 3, 8, 8), seed=1)

    def loss(model, xs):
        return jnp.mean(jax.vmap(model)(xs) ** 2)

    @eqx.filter_jit  # both models' parameter and input gradients: one program
    def grads(models, xs):
        # one backward pass per model, w.r.t. its parameters and the input
        return [eqx.filter_grad(lambda mx: loss(*mx))((model, xs)) for model in models]

    (g_ours, dx_ours), (g_theirs, dx_theirs) = grads((ours, theirs), xs)
    for index in (0, 3):
        for field in ("weight", "bias"):
            _close(
                getattr(g_ours.layers[index], field),
                getattr(g_theirs.layers[index], field),
                rtol=1e-4,
                atol=1e-6,
            )
    # and w.r.t. the input
    _close(dx_ours, dx_theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "n, kwargs",
    [
        (1, dict(kernel_size=4, stride=3, padding="SAME_LOWER", dilation=2)),
        (
            2,
            dict(kernel_size=(2, 3), stride=(2, 1), padding=((2, 0), (1, 1)), groups=2),
        ),
        (3, dict(kernel_size=2, padding="same", padding_mode="CIRCULAR")),
    ],
)
def test_conv_grads_equal_eqx_grads(n, kwargs):
    ours, theirs = _conv_pair(n, 2, 4, seed=2, lim=0.5, **kwargs)
    x = _normal((2,) + (6,) * n)

    def loss(model, x):
        return jnp.sum(jnp.sin(model(x)))

    @eqx.filter_jit  # both gradients in one program
    def grads(models, x):
        return [jax.grad(loss, argnums=(0, 1))(model, x) for model in models]

    (g_ours, dx_ours), (g_theirs, dx_theirs) = grads((ours, theirs), x)
    _close(g_ours.weight, g_theirs.weight, rtol=1e-4, atol=1e-5)
    _close(g_ours.bias, g_theirs.bias, rtol=1e-4, atol=1e-5)
    _close(dx_ours, dx_theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "n, c_in, c_out, kwargs",
    [
        (2, 12, 4, dict(kernel_size=3, stride=2, padding="same")),
        (1, 8, 2, dict(kernel_size=3, groups=2, padding="SAME_LOWER", dilation=2)),
        (2, 6, 2, dict(kernel_size=2, padding=1, padding_mode="CIRCULAR")),
    ],
)
def test_many_inputs_per_output_keep_the_convolution(n, c_in, c_out, kwargs):
    """At least 3 input channels per output (and 4 in all, per group), where
    kmap would contract the channels first on the CPU: the layer keeps the
    convolution (`_conv_lowering.no_contraction`: its gradient is faster
    under a batch `vmap`); values and gradients equal eqx.nn's."""
    ours, theirs = _conv_pair(n, c_in, c_out, seed=1, lim=0.3, **kwargs)
    x = _normal((2, c_in) + (7,) * n)

    def loss(model, x):
        return jnp.sum(jnp.sin(jax.vmap(model)(x)))

    @eqx.filter_jit  # values and gradients of both in one program
    def run(models, x):
        return [jax.value_and_grad(loss, argnums=(0, 1))(m, x) for m in models]

    with recorded_forms() as used:
        (v_ours, (g_ours, dx_ours)), (v_theirs, (g_theirs, dx_theirs)) = run(
            (ours, theirs), x
        )
    assert "contraction" not in used
    # The spy sees a contraction: kmap's, 4 channels into one output.
    kmap = es.kmap(lambda w, k: jnp.sum(w * k), kernel_size=(4, 3, 3))
    with recorded_forms() as used:
        jax.make_jaxpr(kmap)(np.ones((4, 5, 5), np.float32), np.ones((4, 3, 3)))
    assert used == ["contraction"]
    _close(v_ours, v_theirs, rtol=1e-4, atol=1e-4)
    _close(g_ours.weight, g_theirs.weight, rtol=1e-4, atol=1e-4)
    _close(dx_ours, dx_theirs, rtol=1e-4, atol=1e-5)


def _strided_conv():
    conv = _uninitialised(enn.Conv2d, 2, 3, 3, stride=(1, 2), padding="same")
    return _with_params(conv, lim=0.5)


def test_check_grads_conv():
    """First order w.r.t. the input and the parameters, one check."""
    conv = _strided_conv()
    x = _normal((2, 5, 6))
    params, static = eqx.partition(conv, eqx.is_array)
    check_grads(
        jax.jit(lambda x, p: eqx.combine(p, static)(x)),
        (x, params),
        order=1,
        modes=["fwd", "rev"],
        atol=1e-2,
    )


@pytest.mark.thorough  # second order through a stencil: fast in
# test_check_grads_finite_difference_taps; first order: test_check_grads_conv
def test_check_grads_conv_second_order():
    conv = _strided_conv()
    x = _normal((2, 5, 6))
    check_grads(eqx.filter_jit(conv), (x,), order=2, modes=["fwd", "rev"], atol=1e-2)


@pytest.mark.parametrize(
    "layer",
    [
        enn.AvgPool2d(3, stride=2, padding=1),
        enn.MaxPool1d(2, stride=1),
        enn.AverageBlur(2, (3, 2)),
    ],
    ids=["avgpool", "maxpool", "blur"],
)
def test_check_grads_pools_and_blur(layer):
    x = _normal((2, 6, 5)) if layer.num_spatial_dims == 2 else _normal((2, 7))
    check_grads(eqx.filter_jit(layer), (x,), order=1, modes=["fwd", "rev"], atol=1e-2)


def test_check_grads_finite_difference_taps():
    layer = enn.FiniteDifference("laplacian_3", padding_mode="reflect")
    x = _normal((2, 7))
    params, static = eqx.partition(layer, eqx.is_array)
    check_grads(
        jax.jit(lambda p: jnp.tanh(eqx.combine(p, static)(x))),
        (params,),
        order=2,
        modes=["fwd", "rev"],
        atol=1e-2,
    )


def test_layers_are_stencils():
    """The forward pass goes through es.kmap stencils."""
    jax.clear_caches()  # the layers' compiled programs would skip the stencils
    calls = []
    original = es.Stencil.__call__

    def spy(self, *args, **kwargs):
        calls.append(self.kernel_size)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(es.Stencil, "__call__", spy)
        # traced, not compiled
        conv = _with_params(_uninitialised(enn.Conv2d, 2, 2, 3))
        eqx.filter_eval_shape(conv, np.ones((2, 5, 5), np.float32))
        eqx.filter_eval_shape(enn.MaxPool2d(2), np.ones((2, 5, 5), np.float32))
        eqx.filter_eval_shape(enn.FiniteDifference(), np.ones((1, 5, 5), np.float32))
    assert calls == [(2, 3, 3), (1, 2, 2), (1, 3, 3)]


# --------------------------------------------------------------------------
# Errors: ValueError naming the argument and the value.


KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (
            lambda: enn.Conv2d(3, 4, 3, groups=2, key=KEY),
            r"in_channels=3[\s\S]*groups=2",
        ),
        (
            lambda: enn.Conv2d(4, 3, 3, groups=2, key=KEY),
            r"out_channels=3[\s\S]*groups=2",
        ),
        (lambda: enn.Conv2d(0, 3, 3, key=KEY), r"in_channels[\s\S]*got 0"),
        (
            lambda: enn.Conv2d(2, 3, (3, 3, 3), key=KEY),
            r"kernel_size[\s\S]*\(3, 3, 3\)[\s\S]*3 entries for 2",
        ),
        (lambda: enn.Conv2d(2, 3, 0, key=KEY), r"kernel_size[\s\S]*got 0"),
        (lambda: enn.Conv2d(2, 3, 3, stride=(1, 0), key=KEY), r"stride[\s\S]*\(1, 0\)"),
        (lambda: enn.Conv1d(2, 3, 3, dilation=-1, key=KEY), r"dilation[\s\S]*-1"),
        (
            # The padding and padding mode are checked after the random
            # initialisation: built with shapes for arrays (also in the next
            # two cases), which compiles nothing.
            lambda: eqx.filter_eval_shape(enn.Conv2d, 2, 3, 3, padding="full", key=KEY),
            r"padding[\s\S]*SAME[\s\S]*'full'",
        ),
        (
            lambda: eqx.filter_eval_shape(
                enn.Conv2d, 2, 3, 3, padding=(1, 2, 3), key=KEY
            ),
            r"padding[\s\S]*\(1, 2, 3\)",
        ),
        (
            lambda: eqx.filter_eval_shape(
                enn.Conv2d, 2, 3, 3, padding_mode="zero", key=KEY
            ),
            r"padding_mode[\s\S]*ZEROS[\s\S]*'zero'",
        ),
        (lambda: enn.Conv(0, 2, 3, 3, key=KEY), r"num_spatial_dims[\s\S]*got 0"),
        (lambda: enn.MaxPool2d(2, padding=3), r"padding=3[\s\S]*kernel_size=\(2, 2\)"),
        (lambda: enn.AvgPool1d(2, stride=0), r"stride[\s\S]*0"),
        (lambda: enn.MaxPool2d((2, 2, 2)), r"kernel_size[\s\S]*\(2, 2, 2\)"),
        (lambda: enn.AverageBlur(3, (3, 0)), r"kernel_size[\s\S]*\(3, 0\)"),
        (
            lambda: enn.AverageBlur(3, (3, 3), num_spatial_dims=3),
            r"kernel_size[\s\S]*\(3, 3\)",
        ),
        (
            lambda: enn.AverageBlur(3, 3, padding_mode="mirror"),
            r"padding_mode[\s\S]*'mirror'",
        ),
        (
            lambda: enn.FiniteDifference("laplacian"),
            r"scheme[\s\S]*laplacian_5[\s\S]*'laplacian'",
        ),
        (lambda: enn.FiniteDifference("central_2d", axis=2), r"axis[\s\S]*got 2"),
        (lambda: enn.FiniteDifference(spacing=0.0), r"spacing[\s\S]*0\.0"),
        (
            lambda: enn.FiniteDifference(spacing=(1.0, 2.0, 3.0)),
            r"spacing[\s\S]*\(1\.0, 2\.0, 3\.0\)",
        ),
        (
            lambda: enn.FiniteDifference("laplacian_9", spacing=(1.0, 2.0)),
            r"laplacian_9[\s\S]*spacing=\(1\.0, 2\.0\)",
        ),
    ],
)
def test_bad_arguments_raise(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


@pytest.mark.parametrize(
    "make, shape, pattern",
    [
        (
            lambda: _with_params(_uninitialised(enn.Conv2d, 3, 4, 3)),
            (3, 8),
            r"rank 3[\s\S]*\(3, 8\)",
        ),
        (
            lambda: _with_params(_uninitialised(enn.Conv2d, 3, 4, 3)),
            (2, 8, 8),
            r"in_channels=3[\s\S]*\(2, 8, 8\)",
        ),
        (
            lambda: _with_params(_uninitialised(enn.Conv2d, 3, 4, 5)),
            (3, 4, 8),
            r"\(4, 8\)[\s\S]*kernel_size=\(5, 5\)",
        ),
        (lambda: enn.MaxPool2d(2), (8, 8), r"rank 3[\s\S]*\(8, 8\)"),
        (
            lambda: enn.AvgPool1d(3, stride=2, padding=3, use_ceil=True),
            (1, 4),
            r"use_ceil=True",
        ),
        (lambda: enn.AverageBlur(3, 3), (2, 8, 8), r"in_channels=3[\s\S]*\(2, 8, 8\)"),
        (
            lambda: enn.FiniteDifference("laplacian_7"),
            (1, 5, 5),
            r"rank 4[\s\S]*\(1, 5, 5\)",
        ),
    ],
)
def test_bad_inputs_raise(make, shape, pattern):
    layer = make()  # built here: a layer's random init compiles (not at collection)
    with pytest.raises(ValueError, match=pattern):
        layer(jax.device_put(np.ones(shape, np.float32)))  # compiles nothing


def test_non_bool_flags_raise_type_error():
    with pytest.raises(TypeError, match=r"use_bias[\s\S]*'yes'"):
        enn.Conv2d(2, 2, 3, use_bias="yes", key=KEY)  # pyright: ignore
    with pytest.raises(TypeError, match=r"kernel_size[\s\S]*2\.5"):
        enn.MaxPool1d(2.5)  # pyright: ignore


def test_public_names():
    layers = {
        "Conv", "Conv1d", "Conv2d", "Conv3d", "MaxPool", "MaxPool1d", "MaxPool2d",
        "MaxPool3d", "AvgPool", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AverageBlur",
        "FiniteDifference",
    }  # fmt: skip
    assert layers <= set(vars(enn))
    assert es.nn is enn
    for name in layers:
        assert issubclass(getattr(enn, name), eqx.Module)
    assert set(enn.SCHEMES) >= {"laplacian_5", "central_1d", "central_2d"}
