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

import eqx_stencil as es
import eqx_stencil.nn as enn


MODES = ("ZEROS", "REFLECT", "REPLICATE", "CIRCULAR")
NP_MODES = {"ZEROS": "constant", "REFLECT": "reflect", "REPLICATE": "edge"}
NP_MODES["CIRCULAR"] = "wrap"
TOL = dict(rtol=2e-5, atol=2e-5)


def _normal(shape, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _copy_params(ours, theirs):
    """`ours` with the arrays of `theirs` (same field names and shapes)."""
    if getattr(theirs, "bias", None) is None:
        return eqx.tree_at(lambda m: m.weight, ours, theirs.weight)
    return eqx.tree_at(lambda m: (m.weight, m.bias), ours, (theirs.weight, theirs.bias))


@eqx.filter_jit
def _apply(layer, x):
    """`layer(x)`, compiled (much faster on CPU than eager evaluation)."""
    return layer(x)


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


@settings(max_examples=40, deadline=None)
@given(conv_configs())
def test_conv_equals_eqx_conv(config):
    n, c_in, c_out, kwargs, shape, seed = config
    rng = np.random.default_rng(seed)
    theirs = _uninitialised(eqx.nn.Conv, n, c_in, c_out, **kwargs)
    arrays = [
        jnp.asarray(rng.uniform(-1, 1, leaf.shape), leaf.dtype)
        for leaf in (theirs.weight, theirs.bias)
        if leaf is not None
    ]
    theirs = eqx.tree_at(
        lambda m: [a for a in (m.weight, m.bias) if a is not None], theirs, arrays
    )
    ours = _copy_params(_uninitialised(enn.Conv, n, c_in, c_out, **kwargs), theirs)
    x = _normal(shape, seed)
    _close(_apply(ours, x), _apply(theirs, x))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_conv_same_fields_shapes_and_initialisation(n):
    key = jax.random.PRNGKey(3)
    kwargs = dict(kernel_size=3, stride=2, padding="same", groups=2, dtype=jnp.float32)
    ours = getattr(enn, f"Conv{n}d")(4, 6, key=key, **kwargs)
    theirs = getattr(eqx.nn, f"Conv{n}d")(4, 6, key=key, **kwargs)
    assert isinstance(ours, enn.Conv)
    for field in vars(theirs):
        assert np.shape(getattr(ours, field)) == np.shape(getattr(theirs, field))
        if isinstance(getattr(theirs, field), jax.Array):
            # The same key gives the same weights: eqx.nn's initialisation.
            _close(getattr(ours, field), getattr(theirs, field), rtol=0, atol=0)
        else:
            assert getattr(ours, field) == getattr(theirs, field), field
    assert [leaf.shape for leaf in jax.tree_util.tree_leaves(ours)] == [
        leaf.shape for leaf in jax.tree_util.tree_leaves(theirs)
    ]


def test_conv_large_kernel_and_channels():
    """A realistic layer: 5x5, 16 -> 32 channels, stride 2, 'SAME'."""
    key = jax.random.PRNGKey(0)
    theirs = eqx.nn.Conv2d(16, 32, 5, stride=2, padding="SAME", key=key)
    ours = enn.Conv2d(16, 32, 5, stride=2, padding="SAME", key=key)
    x = _normal((16, 33, 30))
    _close(_apply(ours, x), _apply(theirs, x), rtol=1e-4, atol=1e-4)


def test_conv_depthwise():
    key = jax.random.PRNGKey(0)
    kwargs = dict(kernel_size=3, padding=1, groups=8, padding_mode="CIRCULAR")
    theirs = eqx.nn.Conv2d(8, 16, key=key, **kwargs)
    ours = enn.Conv2d(8, 16, key=key, **kwargs)
    x = _normal((8, 10, 12))
    _close(_apply(ours, x), _apply(theirs, x))


def test_conv_complex():
    key = jax.random.PRNGKey(0)
    kwargs = dict(kernel_size=3, padding="same", dtype=jnp.complex64)
    theirs = eqx.nn.Conv2d(2, 3, key=key, **kwargs)
    ours = enn.Conv2d(2, 3, key=key, **kwargs)
    x = (_normal((2, 6, 7)) + 1j * _normal((2, 6, 7), seed=1)).astype(jnp.complex64)
    _close(_apply(ours, x), _apply(theirs, x))


@pytest.mark.parametrize(
    "groups, convolutions", [(1, 1), (2, 0)], ids=["dense", "grouped"]
)
def test_few_channels_lower_to_one_convolution_unless_grouped(groups, convolutions):
    """18 taps times 2 outputs: below kmap's threshold, yet a dense layer is
    one convolution (its gradient compiles as fast as `eqx.nn.Conv`'s); a
    grouped one keeps the slices (XLA gathers a batch-sharded grouped
    convolution)."""
    layer = enn.Conv2d(2, 2, 3, padding=1, groups=groups, key=jax.random.PRNGKey(0))
    params, static = eqx.partition(layer, eqx.is_array)

    def loss(params, x):
        return jnp.sum(jnp.sin(jax.vmap(eqx.combine(params, static))(x)))

    x = _normal((4, 2, 8, 8))
    program = jax.jit(jax.grad(loss)).lower(params, x).compile().as_text()
    assert program.count(" convolution(") == 2 * convolutions  # forward, weight grad


def test_conv_wrong_weights_disagree():
    """The comparison can fail: a perturbed weight is caught."""
    key = jax.random.PRNGKey(0)
    theirs = eqx.nn.Conv2d(2, 3, 3, key=key)
    ours = enn.Conv2d(2, 3, 3, key=key)
    ours = eqx.tree_at(lambda m: m.weight, ours, ours.weight.at[1, 0, 2, 1].add(0.1))
    x = _normal((2, 6, 6))
    with pytest.raises(AssertionError):
        _close(ours(x), theirs(x))


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
        expected = theirs(x)
    except RuntimeError as error:  # use_ceil made the padding exceed the kernel
        assert "Paddings should be less than the size of the kernel" in str(error)
        with pytest.raises(ValueError, match=r"use_ceil=True[\s\S]*kernel_size"):
            ours(x)
        return
    _close(_apply(ours, x), expected)
    _close(_apply(generic, x), expected)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_max_pool_grads_at_ties_equal_eqx(n):
    """At ties the gradient goes to the first maximal tap, as eqx.nn's."""
    kwargs = dict(kernel_size=3, stride=2, padding=1)
    ours = getattr(enn, f"MaxPool{n}d")(**kwargs)
    theirs = getattr(eqx.nn, f"MaxPool{n}d")(**kwargs)
    x = jax.random.bernoulli(jax.random.PRNGKey(n), 0.5, (2,) + (6,) * n) * 1.0
    weights = _normal(jax.eval_shape(theirs, x).shape)
    grad = eqx.filter_jit(jax.grad(lambda x, pool: jnp.sum(weights * pool(x))))
    _close(grad(x, ours), grad(x, theirs), rtol=0, atol=0)


def test_max_pool_integer_input():
    x = jnp.arange(-20, 16, dtype=jnp.int32).reshape(1, 6, 6)
    out = enn.MaxPool2d(3, stride=2, padding=1)(x)
    assert out.dtype == jnp.int32
    expected = eqx.nn.MaxPool2d(3, stride=2, padding=1)(x.astype(jnp.float32))
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


@pytest.mark.parametrize(
    "kernel, shape, mode",
    [
        ((3,), (2, 9), "ZEROS"),
        ((4,), (1, 7), "REFLECT"),
        ((3, 3), (3, 6, 7), "ZEROS"),
        ((5, 2), (2, 8, 6), "REPLICATE"),
        ((1, 4), (1, 5, 6), "CIRCULAR"),
        ((2, 3, 3), (2, 4, 5, 6), "ZEROS"),
    ],
)
def test_average_blur_equals_numpy_loops(kernel, shape, mode):
    blur = enn.AverageBlur(shape[0], kernel, padding_mode=mode)
    x = _normal(shape)
    _close(_apply(blur, x), reference_blur(x, kernel, mode))


def test_average_blur_equals_depthwise_conv_and_takes_images():
    blur = enn.AverageBlur(in_channels=4, kernel_size=(7, 7))
    conv = eqx.nn.Conv2d(
        4, 4, 7, padding="SAME", groups=4, use_bias=False, key=jax.random.PRNGKey(0)
    )
    conv = eqx.tree_at(lambda m: m.weight, conv, jnp.full((4, 1, 7, 7), 1 / 49))
    x = jax.random.randint(jax.random.PRNGKey(1), (4, 20, 24), 0, 256, jnp.uint8)
    out = blur(x)  # uint8 images as in kernex's AverageBlurLayer
    assert out.dtype == jnp.float32 and out.shape == x.shape
    _close(out, conv(x.astype(jnp.float32)), rtol=1e-5, atol=1e-3)
    assert enn.AverageBlur(2, 3).kernel_size == (3, 3)  # an int: 2-D


# --------------------------------------------------------------------------
# FiniteDifference: hand-written slicing.


def test_laplacian_5_equals_hand_slicing():
    h = 0.25
    u = _normal((2, 9, 11))
    lap = enn.FiniteDifference("laplacian_5", spacing=h)
    p = jnp.pad(u, ((0, 0), (1, 1), (1, 1)))
    expected = (
        p[:, 2:, 1:-1] + p[:, :-2, 1:-1] + p[:, 1:-1, 2:] + p[:, 1:-1, :-2] - 4 * u
    ) / h**2
    _close(_apply(lap, u), expected, rtol=1e-5, atol=1e-4)


def test_laplacian_5_periodic_anisotropic_equals_rolls():
    hx, hy = 0.5, 2.0
    u = _normal((1, 8, 6))
    lap = enn.FiniteDifference("laplacian_5", spacing=(hx, hy), padding_mode="circular")
    roll = jnp.roll
    expected = (roll(u, 1, 1) - 2 * u + roll(u, -1, 1)) / hx**2 + (
        roll(u, 1, 2) - 2 * u + roll(u, -1, 2)
    ) / hy**2
    _close(lap(u), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "scheme, axis, shape",
    [
        ("laplacian_3", 0, (2, 12)),
        ("central_1d", 0, (2, 12)),
        ("central_2d", 0, (1, 7, 8)),
        ("central_2d", -1, (1, 7, 8)),
        ("laplacian_9", 0, (1, 7, 8)),
        ("laplacian_7", 0, (1, 5, 6, 7)),
        ("central_3d", 2, (1, 5, 6, 7)),
    ],
)
def test_schemes_equal_hand_slicing(scheme, axis, shape):
    h = 0.5
    u = _normal(shape)
    n = len(shape) - 1
    p = jnp.pad(u, [(0, 0)] + [(1, 1)] * n)

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
    layer = enn.FiniteDifference(scheme, spacing=h, axis=axis)
    assert layer.weight.shape == (3,) * n
    _close(_apply(layer, u), expected, rtol=1e-5, atol=1e-4)


def test_laplacian_is_exact_for_quadratics_inside():
    h = 0.1
    grid = jnp.arange(12) * h
    u = 3 * grid[:, None] ** 2 - grid[None, :] ** 2 + grid[:, None] * grid[None, :]
    for scheme in ("laplacian_5", "laplacian_9"):
        out = enn.FiniteDifference(scheme, spacing=h)(u[None])[0, 1:-1, 1:-1]
        _close(out, jnp.full_like(out, 4.0), rtol=1e-3, atol=1e-3)


def test_finite_difference_taps_are_learnable():
    """Gradients w.r.t. the taps equal those of eqx.nn's depthwise conv with the
    same taps, and a few descent steps fit a target operator."""
    u = _normal((3, 10, 10))
    layer = enn.FiniteDifference("laplacian_5", padding_mode="replicate")
    conv = eqx.nn.Conv2d(
        3, 3, 3, padding=1, groups=3, use_bias=False, padding_mode="REPLICATE",
        key=jax.random.PRNGKey(0),
    )  # fmt: skip
    target = enn.FiniteDifference("central_2d", axis=1, padding_mode="replicate")(u)

    def loss(layer):
        return jnp.mean((layer(u) - target) ** 2)

    def conv_loss(w):
        conv_w = eqx.tree_at(
            lambda m: m.weight, conv, jnp.broadcast_to(w, (3, 1, 3, 3))
        )
        return jnp.mean((conv_w(u) - target) ** 2)

    grads = eqx.filter_grad(loss)(layer)
    _close(grads.weight, jax.grad(conv_loss)(layer.weight), rtol=1e-4, atol=1e-5)

    @eqx.filter_jit
    def step(layer):
        grads = eqx.filter_grad(loss)(layer)
        return eqx.tree_at(
            lambda m: m.weight, layer, layer.weight - 0.05 * grads.weight
        )

    start = loss(layer)
    for _ in range(50):
        layer = step(layer)
    assert loss(layer) < 0.1 * start


# --------------------------------------------------------------------------
# Sequential, vmap, grads.


def _pair_of_models(key):
    """The same small CNN from eqx.nn and from eqx_stencil.nn, same weights."""
    k1, k2 = jax.random.split(key)

    def build(nn):
        return eqx.nn.Sequential(
            [
                nn.Conv2d(3, 8, 3, padding="same", key=k1),
                eqx.nn.Lambda(jax.nn.relu),
                nn.MaxPool2d(2, stride=2),
                nn.Conv2d(8, 4, 3, stride=2, padding=1, padding_mode="REFLECT", key=k2),
                nn.AvgPool2d(2, stride=1, padding=1),
            ]
        )

    theirs, ours = build(eqx.nn), build(enn)
    for index in (0, 3):
        ours = eqx.tree_at(
            lambda m, i=index: (m.layers[i].weight, m.layers[i].bias),
            ours,
            (theirs.layers[index].weight, theirs.layers[index].bias),
        )
    return ours, theirs


def test_sequential_and_vmap_equal_eqx():
    ours, theirs = _pair_of_models(jax.random.PRNGKey(0))
    xs = _normal((5, 3, 16, 12))
    expected = _apply(jax.vmap(theirs), xs)
    _close(_apply(jax.vmap(ours), xs), expected)
    _close(_apply(eqx.filter_vmap(ours), xs), expected)
    _close(_apply(ours, xs[1]), expected[1])
    # key is accepted and ignored, as in eqx.nn
    keyed = eqx.filter_jit(lambda model, x: model(x, key=jax.random.PRNGKey(1)))
    _close(keyed(ours, xs[0]), expected[0])


def test_filter_grad_equals_eqx_grads():
    ours, theirs = _pair_of_models(jax.random.PRNGKey(1))
    xs = _normal((4, 3, 12, 12))

    def loss(model, xs):
        return jnp.mean(jax.vmap(model)(xs) ** 2)

    grads = eqx.filter_jit(eqx.filter_grad(loss))
    g_ours, g_theirs = grads(ours, xs), grads(theirs, xs)
    for index in (0, 3):
        for field in ("weight", "bias"):
            _close(
                getattr(g_ours.layers[index], field),
                getattr(g_theirs.layers[index], field),
                rtol=1e-4,
                atol=1e-6,
            )
    # and w.r.t. the input
    dx = eqx.filter_jit(jax.grad(loss, argnums=1))
    dx_ours, dx_theirs = dx(ours, xs), dx(theirs, xs)
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
    key = jax.random.PRNGKey(2)
    theirs = eqx.nn.Conv(n, 2, 4, key=key, **kwargs)
    ours = enn.Conv(n, 2, 4, key=key, **kwargs)
    x = _normal((2,) + (6,) * n)

    def loss(model, x):
        return jnp.sum(jnp.sin(model(x)))

    grads = eqx.filter_jit(jax.grad(loss, argnums=(0, 1)))
    g_ours, dx_ours = grads(ours, x)
    g_theirs, dx_theirs = grads(theirs, x)
    _close(g_ours.weight, g_theirs.weight, rtol=1e-4, atol=1e-5)
    _close(g_ours.bias, g_theirs.bias, rtol=1e-4, atol=1e-5)
    _close(dx_ours, dx_theirs, rtol=1e-4, atol=1e-5)


def test_check_grads_conv():
    conv = enn.Conv2d(2, 3, 3, stride=(1, 2), padding="same", key=jax.random.PRNGKey(0))
    x = _normal((2, 5, 6))
    check_grads(eqx.filter_jit(conv), (x,), order=2, modes=["fwd", "rev"], atol=1e-2)
    params, static = eqx.partition(conv, eqx.is_array)
    check_grads(
        jax.jit(lambda p: eqx.combine(p, static)(x)),
        (params,),
        order=1,
        modes=["fwd", "rev"],
        atol=1e-2,
    )


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
        enn.Conv2d(2, 2, 3, key=jax.random.PRNGKey(0))(jnp.ones((2, 5, 5)))
        enn.MaxPool2d(2)(jnp.ones((2, 5, 5)))
        enn.FiniteDifference()(jnp.ones((1, 5, 5)))
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
            lambda: enn.Conv2d(2, 3, 3, padding="full", key=KEY),
            r"padding[\s\S]*SAME[\s\S]*'full'",
        ),
        (
            lambda: enn.Conv2d(2, 3, 3, padding=(1, 2, 3), key=KEY),
            r"padding[\s\S]*\(1, 2, 3\)",
        ),
        (
            lambda: enn.Conv2d(2, 3, 3, padding_mode="zero", key=KEY),
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
        (lambda: enn.Conv2d(3, 4, 3, key=KEY), (3, 8), r"rank 3[\s\S]*\(3, 8\)"),
        (
            lambda: enn.Conv2d(3, 4, 3, key=KEY),
            (2, 8, 8),
            r"in_channels=3[\s\S]*\(2, 8, 8\)",
        ),
        (
            lambda: enn.Conv2d(3, 4, 5, key=KEY),
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
        layer(jnp.ones(shape))


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
