"""`es.kscan` / `es.sscan` against a NumPy reference of the sequential definition.

The reference visits output positions in row-major order (or the reverse),
builds each window from the *working* padded array, calls the position's
function and writes the result at the window's anchor before the next window
is read. Any plan the library picks must reproduce it exactly.
"""

import itertools
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import check_grads_in_one_program
from hypothesis import assume, given, settings, strategies as st
from reference import MODES, fits, geometry, pad_array
from region_reference import owner_map

import eqx_stencil as es
from eqx_stencil._scan import scan_axes


def reference_kscan(
    funcs, x, kernel_size, strides=1, padding=0, dilation=1, boundary="constant",
    cval=0, reverse=False, regions=(), has_default=True,
):  # fmt: skip
    """`funcs[0]` default, `funcs[r + 1]` on `regions[r]`; natural-order windows."""
    x = np.asarray(x, dtype=np.float64)
    geo = geometry(x.shape, kernel_size, strides, padding, dilation)
    work = pad_array(x, geo["pads"], boundary, cval).astype(np.float64)
    owners = owner_map(
        x.shape, regions, has_default, kernel_size, strides, padding, dilation
    )
    out = np.zeros(geo["out_shape"])
    positions = list(itertools.product(*(range(n) for n in geo["out_shape"])))
    for position in reversed(positions) if reverse else positions:
        starts = [o * s for o, s in zip(position, geo["strides"])]
        index = tuple(
            start + np.arange(k) * d
            for start, k, d in zip(starts, geo["kernel"], geo["dilation"])
        )
        value = funcs[owners[position]](work[np.ix_(*index)])
        anchor = tuple(
            start + ((k - 1) // 2) * d
            for start, k, d in zip(starts, geo["kernel"], geo["dilation"])
        )
        work[anchor] = value
        out[position] = value
    return out


def tap_function(taps, weights, bias):
    """A function of a few absolute taps: sum w * tap + bias, with a tanh."""

    def func(w):
        total = bias
        for tap, weight in zip(taps, weights):
            total = total + weight * w[tap]
        return np.tanh(total) if isinstance(w, np.ndarray) else jnp.tanh(total)

    return func


@st.composite
def scan_configs(draw, max_rank=3):
    ndim = draw(st.integers(1, max_rank))
    shape = tuple(draw(st.integers(1, 6 if ndim < 3 else 4)) for _ in range(ndim))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    padding = tuple(
        (draw(st.integers(-1, 2)), draw(st.integers(-1, 2))) for _ in range(ndim)
    )
    assume(fits(shape, kernel, strides, padding, dilation))
    boundary = draw(st.sampled_from(MODES))
    reverse = draw(st.booleans())
    every = list(itertools.product(*(range(k) for k in kernel)))
    n_funcs = draw(st.integers(1, 3))
    funcs = []
    for _ in range(n_funcs):
        taps = draw(st.lists(st.sampled_from(every), min_size=0, max_size=3))
        weights = draw(
            st.lists(st.floats(-1, 1), min_size=len(taps), max_size=len(taps))
        )
        funcs.append((tuple(taps), tuple(weights), draw(st.floats(-1, 1))))
    regions = []
    for _ in range(n_funcs - 1):
        regions.append(
            tuple(
                slice(draw(st.integers(-n, n)), draw(st.integers(-n, n) | st.none()))
                for n in shape
            )
        )
    return dict(
        shape=shape,
        kwargs=dict(
            kernel_size=kernel,
            strides=strides,
            padding=padding,
            dilation=dilation,
            boundary=boundary,
        ),
        reverse=reverse,
        funcs=funcs,
        regions=regions,
    )


@settings(max_examples=60, deadline=None)
@given(config=scan_configs(), seed=st.integers(0, 2**16))
def test_kscan_matches_sequential_reference(config, seed):
    x = np.random.default_rng(seed).normal(size=config["shape"]).astype(np.float32)
    funcs = [tap_function(*spec) for spec in config["funcs"]]
    stencil = es.kscan(funcs[0], reverse=config["reverse"], **config["kwargs"])
    for region, func in zip(config["regions"], funcs[1:]):
        stencil = stencil.at[region].set(func)
    actual = jax.jit(stencil)(x)
    expected = reference_kscan(
        funcs, x, reverse=config["reverse"], regions=config["regions"],
        **config["kwargs"],
    )  # fmt: skip
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "deltas, reverse, expected",
    [
        ([(-1, 0), (-1, -1)], False, 1),  # explicit time marching: by rows
        ([(0, -1), (-1, 0), (1, 0), (0, 1)], False, 2),  # Gauss-Seidel: by cells
        ([(0, 1), (1, 1)], False, 0),  # reads only cells updated later: at once
        ([(0, 1), (1, 1)], True, 2),  # ... which come first in reverse
        ([(1, 0)], True, 1),
        ([], False, 0),
    ],
)
def test_scan_plan(deltas, reverse, expected):
    assert scan_axes(deltas, 2, reverse) == expected


@st.composite
def row_plan_configs(draw):
    """Sweeps whose functions read rows before their own (along the first `m`
    axes) and cells after their own in it: a plan of `m` scanned axes."""
    ndim = draw(st.integers(2, 3))
    m = draw(st.integers(1, ndim - 1))
    reverse = draw(st.booleans())
    shape = tuple(draw(st.integers(1, 6 if ndim < 3 else 4)) for _ in range(ndim))
    kernel = tuple(draw(st.integers(2 if d < m else 1, 3)) for d in range(ndim))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    padding = tuple(
        (draw(st.integers(-1, 2)), draw(st.integers(-1, 2))) for _ in range(ndim)
    )
    assume(fits(shape, kernel, strides, padding, dilation))
    anchor = tuple((k - 1) // 2 for k in kernel)
    taps = list(itertools.product(*(range(k) for k in kernel)))
    own = [t for t in taps if t[:m] == anchor[:m]]  # the step's own row
    later = [t for t in own if (t[m:] < anchor[m:] if reverse else t[m:] > anchor[m:])]
    readable = [t for t in taps if t[:m] != anchor[:m]] + later
    funcs, regions = [], []
    for r in range(draw(st.integers(1, 3))):
        read = draw(st.lists(st.sampled_from(readable), min_size=1, max_size=3))
        weights = draw(
            st.lists(st.floats(-1, 1), min_size=len(read), max_size=len(read))
        )
        funcs.append((tuple(read), tuple(weights), draw(st.floats(-1, 1))))
        if r:
            bounds = [
                (draw(st.integers(-n, n)), draw(st.integers(-n, n) | st.none()))
                for n in shape
            ]
            regions.append(tuple(slice(*b) for b in bounds))
    kwargs = dict(
        kernel_size=kernel,
        strides=strides,
        padding=padding,
        dilation=dilation,
        boundary=draw(st.sampled_from(MODES)),
        cval=draw(st.sampled_from([0.0, 1.5])),
    )
    return dict(
        shape=shape, kwargs=kwargs, reverse=reverse, funcs=funcs, regions=regions
    )


@settings(max_examples=40, deadline=None)
@given(config=row_plan_configs(), seed=st.integers(0, 2**16))
def test_row_plans_match_sequential_reference(config, seed):
    """Row plans (rows of results carried, the padding read from the input or
    the whole padded array carried) against the sequential definition."""
    x = np.random.default_rng(seed).normal(size=config["shape"]).astype(np.float32)
    funcs = [tap_function(*spec) for spec in config["funcs"]]
    stencil = es.kscan(funcs[0], reverse=config["reverse"], **config["kwargs"])
    for region, func in zip(config["regions"], funcs[1:]):
        stencil = stencil.at[region].set(func)
    expected = reference_kscan(
        funcs, x, reverse=config["reverse"], regions=config["regions"],
        **config["kwargs"],
    )  # fmt: skip
    np.testing.assert_allclose(jax.jit(stencil)(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "boundary",
    [
        "constant",
        # wrap: every boundary on row plans is test_row_plans_match_sequential_
        # reference's; the gradient rule is the constant case's.
        pytest.param("wrap", marks=pytest.mark.thorough),
    ],
)
def test_row_plan_values_and_gradients(boundary):
    def step(u, c):  # the row before, and the next cell of its own row
        return c * u[-1, -1] + jnp.sin(u[-1, 1]) + 0.5 * u[0, 1]

    stencil = (
        es.kscan(step, kernel_size=3, padding=1, relative=True, boundary=boundary)
        .at[:, 0]
        .set(lambda u, c: c * u[0, 0])
    )
    x = np.random.default_rng(2).normal(size=(6, 5)).astype(np.float32)
    expected = reference_kscan(
        [
            lambda w: 0.7 * w[0, 0] + np.sin(w[0, 2]) + 0.5 * w[1, 2],
            lambda w: 0.7 * w[1, 1],
        ],
        x, kernel_size=3, padding=1, boundary=boundary, regions=[(slice(None), 0)],
    )  # fmt: skip
    value = check_grads_in_one_program(
        stencil, (x, np.float32(0.7)), x, modes=["fwd", "rev"],
        atol=1e-2, rtol=1e-2,
    )  # fmt: skip
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)


def test_row_plan_carries_the_last_row_not_the_padded_array():
    """The row scan carries the last row of results and stacks the rows as its
    outputs: no padded working array to build or slice down, nothing larger
    than a row copied in the loop (what a hand-written row scan compiles to)."""
    F, _ = linear_convection(41, 21)
    hlo = jax.jit(F).lower(jax.ShapeDtypeStruct((41, 21), jnp.float32))
    hlo = hlo.compile().as_text()
    assert hlo.count(" while(") == 1
    assert "f32[43,23]" not in hlo  # the padded shape
    carry = hlo.split(" while(")[0].rsplit("\n", 1)[1]
    assert "f32[41,21]" not in carry and "f32[1,21]" in carry, carry
    body = hlo.split("body=")[1].split(",")[0]
    computation = hlo.split(f"\n{body} ")[1].split("\n}")[0]
    copied = re.findall(r"= (\S+) copy\(", computation)
    assert set(copied) <= {"s32[]", "f32[1,21]{1,0}"}, copied


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dilation", [1, 2], ids=["one_row", "two_rows"])
def test_row_plan_reads_the_rows_written_before_in_either_order(reverse, dilation):
    """A row scan reads the rows the sweep wrote before the step's (the rows
    above it, or below it in reverse), rows it has not written yet as input,
    and with dilation 2 the rows two steps back; under `vmap` too."""
    behind = 1 if reverse else -1

    def step(u):
        return 0.5 * u[behind, 0] + 0.25 * u[behind, 1] - 0.25 * u[-behind, -1]

    stencil = es.kscan(
        step, kernel_size=3, padding=dilation, dilation=dilation, relative=True,
        reverse=reverse,
    )  # fmt: skip
    xs = np.random.default_rng(4).normal(size=(2, 7, 5)).astype(np.float32)
    expected = [
        reference_kscan(
            [
                lambda w: (
                    0.5 * w[1 + behind, 1]
                    + 0.25 * w[1 + behind, 2]
                    - 0.25 * w[1 - behind, 0]
                )
            ],
            x,
            kernel_size=3,
            padding=dilation,
            dilation=dilation,
            reverse=reverse,
        )  # fmt: skip
        for x in xs
    ]
    single, batched = jax.jit(lambda xs: (stencil(xs[0]), jax.vmap(stencil)(xs)))(xs)
    np.testing.assert_allclose(single, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched, np.stack(expected), rtol=1e-5, atol=1e-6)


def test_vmapped_row_scan_stacks_its_rows():
    """Under `vmap` a row scan's steps still write one contiguous block each:
    the rows are the scan's outputs, stacked along the scanned axis, and the
    loop carries only the last row. Written into the whole result, which
    `vmap` gives a leading batch axis, each step's row became `batch`
    separate pieces (a scatter)."""
    # The row before (results) and the step's own row (the input).
    F = es.kscan(
        lambda u: 0.5 * u[-1, 0] + 0.25 * u[-1, -1] + 0.25 * u[0, 1],
        kernel_size=3,
        padding=1,
        relative=True,
    )
    xs = np.random.default_rng(3).normal(size=(4, 41, 21)).astype(np.float32)
    batched = jax.jit(jax.vmap(F))
    np.testing.assert_allclose(batched(xs)[2], jax.jit(F)(xs[2]), rtol=1e-6)
    hlo = batched.lower(xs).compile().as_text()
    assert hlo.count(" while(") == 1 and " scatter(" not in hlo
    carry = hlo.split(" while(")[0].rsplit("\n", 1)[1]
    assert "f32[4,41,21]" not in carry and "f32[4,1,21]" in carry, carry


def linear_convection(nt=151, nx=51, c=0.5):
    """The kernex README example, in eqx_stencil."""
    tmax, xmax = 0.5, 2.0
    dt, dx = tmax / (nt - 1), xmax / (nx - 1)

    def step(u):
        return u["i", "n-1"] - (c * dt / dx) * (u["i", "n-1"] - u["i-1", "n-1"])

    F = es.kscan(
        kernel_size=(3, 3),
        padding=((1, 1), (1, 1)),
        named_axis={0: "n", 1: "i"},
        relative=True,
    )
    one, two = (lambda u: 1.0), (lambda u: 2.0)
    F = F.at[:, 0].set(one).at[:, -1].set(one)
    F = F.at[:, : int((nx - 1) / 4) + 1].set(one).at[:, int((nx - 1) / 2) :].set(one)
    F = F.at[0:1, int((nx - 1) / 4) + 1 : int((nx - 1) / 2)].set(two)
    return F.at[1:, 1:-1].set(step), dt / dx * c


def test_linear_convection_matches_hand_written_time_marching():
    nt, nx = 151, 51
    F, courant = linear_convection(nt, nx)
    u = F(np.ones([nt, nx], np.float32))
    expected = np.ones((nt, nx))
    expected[0, int((nx - 1) / 4) + 1 : int((nx - 1) / 2)] = 2
    for n in range(1, nt):
        expected[n, 1:-1] = expected[n - 1, 1:-1] - courant * (
            expected[n - 1, 1:-1] - expected[n - 1, :-2]
        )
    np.testing.assert_allclose(u, expected, rtol=1e-5, atol=1e-5)


def test_gauss_seidel_sweep_matches_reference():
    x = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)

    def gs(w):
        return 0.25 * (w[0, 1] + w[1, 0] + w[1, 2] + w[2, 1])

    stencil = es.kscan(gs, kernel_size=(3, 3), padding="same", boundary="edge")
    expected = reference_kscan([gs], x, (3, 3), padding="same", boundary="edge")
    np.testing.assert_allclose(jax.jit(stencil)(x), expected, rtol=1e-5)


def test_kscan_whole_window_function_and_vmap():
    x = np.random.default_rng(1).normal(size=(3, 5, 4)).astype(np.float32)
    stencil = es.kscan(lambda w: jnp.mean(w), kernel_size=(3, 3), padding="same")
    expected = np.stack(
        [reference_kscan([np.mean], xi, (3, 3), padding="same") for xi in x]
    )
    np.testing.assert_allclose(jax.vmap(stencil)(x), expected, rtol=1e-5)


def test_kscan_inside_lax_scan_and_gradients():
    def sweep(w, c):
        return c * w[0] + 0.5 * w[-1]

    stencil = es.kscan(sweep, kernel_size=3, padding=1, relative=True)
    x = np.linspace(0.0, 1.0, 6, dtype=np.float32)

    def run(x, c):
        out, _ = jax.lax.scan(lambda u, _: (stencil(u, c), None), x, None, length=3)
        return out

    check_grads_in_one_program(
        run, (x, np.float32(0.7)), x, modes=["fwd", "rev"], atol=1e-2
    )


def test_sscan_keeps_input_outside_offset():
    F = es.sscan(lambda x: x[-1] + x[0], kernel_size=3, relative=True, offset=1)
    np.testing.assert_array_equal(F(np.ones(5, np.float32)), [1, 2, 3, 4, 1])


def test_kscan_vector_output_is_an_error():
    stencil = es.kscan(lambda w: w, kernel_size=2)
    with pytest.raises(ValueError, match="one scalar per window"):
        stencil(np.ones(4, np.float32))


def test_kernex_readme_linear_convection_with_only_the_import_changed():
    import eqx_stencil.kernex as kernex

    tmax, xmax = 0.5, 2.0
    nt, nx = 151, 51
    dt, dx = tmax / (nt - 1), xmax / (nx - 1)
    u = np.ones([nt, nx])
    c = 0.5

    F = kernex.kscan(
        kernel_size=(3, 3),
        padding=((1, 1), (1, 1)),
        named_axis={0: "n", 1: "i"},
        relative=True,
    )

    def bc(u):
        return 1

    def ic1(u):
        return 1

    def ic2(u):
        return 2

    def linear_convection(u):
        return u["i", "n-1"] - (c * dt / dx) * (u["i", "n-1"] - u["i-1", "n-1"])

    F[:, 0] = F[:, -1] = bc
    F[:, : int((nx - 1) / 4) + 1] = F[:, int((nx - 1) / 2) :] = ic1
    F[0:1, int((nx - 1) / 4) + 1 : int((nx - 1) / 2)] = ic2
    F[1:, 1:-1] = linear_convection

    kx_solution = F(jnp.array(u))
    expected = np.ones((nt, nx))
    expected[0, int((nx - 1) / 4) + 1 : int((nx - 1) / 2)] = 2
    for n in range(1, nt):
        expected[n, 1:-1] = expected[n - 1, 1:-1] - (c * dt / dx) * (
            expected[n - 1, 1:-1] - expected[n - 1, :-2]
        )
    np.testing.assert_allclose(kx_solution, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(F(jnp.array(u)), kx_solution)  # call again


def test_kernex_style_2d_diffusion_with_sscan_and_named_axes():
    import eqx_stencil.kernex as kernex

    nt, nx, ny, nu = 12, 9, 8, 0.2
    u0 = np.zeros((nt, nx, ny), np.float32)
    u0[0, 3:6, 3:5] = 2.0

    F = kernex.sscan(
        kernel_size=(3, 3, 3),
        offset=((1, 0), (1, 1), (1, 1)),
        relative=True,
        named_axis={0: "n", 1: "i", 2: "j"},
    )

    @F
    def diffusion(u):
        return u["n-1", "i", "j"] + nu * (
            u["n-1", "i+1", "j"]
            + u["n-1", "i-1", "j"]
            + u["j+1", "n-1", "i"]  # fully named keys may come in any order
            + u["n-1", "i", "j-1"]
            - 4 * u["n-1", "i", "j"]
        )

    expected = u0.copy()
    for n in range(1, nt):
        p = expected[n - 1]
        expected[n, 1:-1, 1:-1] = p[1:-1, 1:-1] + nu * (
            p[2:, 1:-1] + p[:-2, 1:-1] + p[1:-1, 2:] + p[1:-1, :-2] - 4 * p[1:-1, 1:-1]
        )
    np.testing.assert_allclose(diffusion(u0), expected, rtol=1e-5)


def test_kernex_scan_kwargs_reverse():
    import eqx_stencil.kernex as kernex

    F = kernex.kscan(
        kernel_size=(3,), padding=1, relative=True, scan_kwargs={"reverse": True}
    )
    np.testing.assert_array_equal(
        F(lambda x: x[0] + x[1])(np.ones(5, np.float32)), [5, 4, 3, 2, 1]
    )
    with pytest.raises(ValueError, match="scan_kwargs"):
        kernex.kscan(kernel_size=(3,), scan_kwargs={"unroll": 2})


# --------------------------------------------------------------------------
# Extra arguments reach every function on every plan (row, cell, at once),
# with regions, as pytrees and Modules, under vmap; and 64-bit mode.


class Coefficients(eqx.Module):
    a: jax.Array
    b: jax.Array


def _gauss_seidel(u, c, *, shift):
    return c["w"] * (u[-1] + u[1]) + shift


def _explicit(u, c, *, shift):
    return c.a * u[-1, 0] + c.b * u[-1, 1] + shift  # reads the previous row only


@pytest.mark.parametrize(
    "reverse",
    [
        False,
        # reverse: reverse cell plans with regions are
        # test_kscan_matches_sequential_reference's; arguments the False case's.
        pytest.param(True, marks=pytest.mark.thorough),
    ],
)
def test_kscan_arguments_on_the_cell_plan_with_regions(reverse):
    x = np.random.default_rng(0).normal(size=7).astype(np.float32)
    c, shift = {"w": np.float32(0.5)}, 0.25
    stencil = (
        es.kscan(
            _gauss_seidel, kernel_size=3, padding=1, relative=True, reverse=reverse
        )
        .at[2:4]
        .set(lambda u, c, *, shift: -u[0] - shift)
    )
    actual = stencil(x, c, shift=shift)
    expected = reference_kscan(
        [lambda w: 0.5 * (w[0] + w[2]) + shift, lambda w: -w[1] - shift],
        x, kernel_size=3, padding=1, reverse=reverse, regions=[slice(2, 4)],
    )  # fmt: skip
    assert scan_axes([(-1,), (1,)], 1, reverse) == 1  # the cell-by-cell plan
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_kscan_module_argument_on_the_row_plan_and_under_vmap():
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    stencil = es.kscan(
        _explicit, kernel_size=(3, 2), padding=((1, 1), (0, 1)), relative=True
    )
    c = Coefficients(np.float32(0.5), np.float32(-0.25))
    expected = reference_kscan(
        [lambda w: 0.5 * w[0, 0] - 0.25 * w[0, 1] + 1.0],
        x, kernel_size=(3, 2), padding=((1, 1), (0, 1)),
    )  # fmt: skip
    batch = Coefficients(
        np.array([0.5, 0.0], np.float32), np.array([-0.25, 0.0], np.float32)
    )
    single, batched = jax.jit(  # one program: one compile
        lambda c, batch: (
            stencil(x, c, shift=1.0),
            jax.vmap(lambda c: stencil(x, c, shift=1.0))(batch),
        )
    )(c, batch)
    np.testing.assert_allclose(single, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched[1][1:], 1.0)


def test_sscan_arguments_with_regions_and_gradient():
    x = np.arange(1.0, 8.0, dtype=np.float32)
    stencil = (
        es.sscan(lambda u, k: k * u[-1] + u[0], kernel_size=3, relative=True, offset=1)
        .at[4:]
        .set(lambda u, k: u[0] - k)
    )
    expected = np.arange(1.0, 8.0)
    for i in range(1, 6):  # offset 1: positions 1..5, in order
        expected[i] = (
            2.0 * expected[i - 1] + expected[i] if i < 4 else expected[i] - 2.0
        )
    value = check_grads_in_one_program(
        lambda k: stencil(x, k), (np.float32(2.0),), x, modes=["rev"], rtol=1e-2
    )
    np.testing.assert_allclose(value, expected)


def test_kscan_and_sscan_plans_in_64_bit_mode():
    """64-bit mode in this process (`jax.enable_x64`, no subprocess to start)."""
    with jax.enable_x64(True):
        cumsum = es.kscan(
            lambda x: x[-1] + x[0], kernel_size=3, padding=1, relative=True
        )
        # The mode is on (no program compiled to ask).
        assert jax.dtypes.canonicalize_dtype(np.float64) == np.float64
        rows = es.kscan(
            lambda u, k: k * u[-1, 0], kernel_size=(3, 1),
            padding=((1, 1), (0, 0)), relative=True,
        )  # fmt: skip
        gs = es.sscan(
            lambda u: (u[-1, 0] + u[0, -1] + u[1, 0] + u[0, 1]) / 4,
            kernel_size=3, relative=True, offset=1, reverse=True,
        )  # fmt: skip
        scanned, out, swept = jax.jit(  # one program: one compile
            lambda a, b, c: (cumsum(a), rows(b, 2.0), gs(c))
        )(np.ones(5), np.ones((4, 3)), np.full((4, 4), 4, np.int64))
        np.testing.assert_array_equal(scanned, [1, 2, 3, 4, 5])
        assert out.dtype == jnp.float64, out.dtype
        np.testing.assert_array_equal(out[:, 0], [0, 0, 0, 0])
        assert swept.dtype == jnp.int64, swept.dtype


def test_kernex_3d_diffusion_sscan_with_arguments():
    """The kernex README's diffusion `sscan`, with `nu, dt, dx, dy` passed at
    the call (through `eqx_stencil.kernex`)."""
    import eqx_stencil.kernex as kernex

    nt, nx, ny = 10, 8, 7
    nu, dt, dx, dy = 0.5, 0.05, 0.5, 0.4
    u0 = np.zeros((nt, nx, ny), np.float32)
    u0[0, 3:5, 2:5] = 2.0

    @kernex.sscan(
        kernel_size=(3, 3, 3),
        offset=((1, 0), (1, 1), (1, 1)),
        relative=True,
        named_axis={0: "n", 1: "i", 2: "j"},
    )
    def diffusion(u, nu, dt, dx, dy):
        return u["n-1", "i", "j"] + nu * dt * (
            (u["n-1", "i+1", "j"] - 2 * u["n-1", "i", "j"] + u["n-1", "i-1", "j"])
            / dx**2
            + (u["n-1", "i", "j+1"] - 2 * u["n-1", "i", "j"] + u["n-1", "i", "j-1"])
            / dy**2
        )

    expected = u0.copy()
    for n in range(1, nt):
        p = expected[n - 1]
        expected[n, 1:-1, 1:-1] = p[1:-1, 1:-1] + nu * dt * (
            (p[2:, 1:-1] - 2 * p[1:-1, 1:-1] + p[:-2, 1:-1]) / dx**2
            + (p[1:-1, 2:] - 2 * p[1:-1, 1:-1] + p[1:-1, :-2]) / dy**2
        )
    actual = diffusion(u0, nu, dt, dx, dy)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
