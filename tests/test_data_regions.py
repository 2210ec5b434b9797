"""Data regions: `stencil.at[mask].set(f)` with a `jax.Array` boolean mask and
`stencil.at[labels].set((f0, f1, ...))` label maps, against the NumPy reference.

docs/concepts/regions.md, "Regions as data": a data mask selects the same
positions as the static NumPy mask of the same values (by the input coordinate
of each window's anchor; later regions win, static and data alike); a label map
runs `fi` where the label is `i` and covers every position whose anchor lies in
the input; concrete labels out of range are a `ValueError`, traced ones are
clamped. The mask is a pytree leaf: `jit` compiles once for any mask values,
`vmap` over masks is one program.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import check_grads_in_one_program
from hypothesis import given, settings, strategies as st
from reference import relative_func
from region_reference import reference_regions

import eqx_stencil as es
from eqx_stencil._call import _programs


EXAMPLES = 25
GRID = dict(kernel_size=(3, 3), padding="same")
HEAT = dict(GRID, relative=True)


def interior(u):
    return u[0, 0] + 0.1 * (u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0])


def wall(u):
    return 0.25 * u[0, 0]


def corner(u):
    return u[1, 1] - u[-1, -1]


def _check(actual, expected):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@st.composite
def masks(draw, shape=None):
    shape = shape or draw(st.tuples(st.integers(1, 6), st.integers(1, 6)))
    size = shape[0] * shape[1]
    bits = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    return np.asarray(bits, bool).reshape(shape)


GEOMETRIES = [
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=(3, 2), padding=((1, 1), (0, 1)), boundary="wrap"),
    dict(kernel_size=3, strides=(2, 1), padding=1, boundary="reflect"),
    dict(kernel_size=(2, 3), dilation=(2, 1), padding=((0, 3), "same"), cval=2.5),
    dict(kernel_size=3),
]


def default(w):
    return w[0, 0] + 2 * w[1, 1]


def top(w):
    return -w[0, 0]


def masked(w):
    return 3 * w[1, 0]


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    mask=masks(),
    geo=st.sampled_from(GEOMETRIES),
    data_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_data_mask_equals_static_mask_and_reference(mask, geo, data_last, seed):
    """A static region and the mask, in either order (later wins)."""
    x = np.random.default_rng(seed).standard_normal(mask.shape).astype(np.float32)
    rows = (slice(None, 2), Ellipsis)

    def make(mask_index):
        order = [(rows, top), (mask_index, masked)][:: 1 if data_last else -1]
        stencil = es.kmap(default, relative=True, **geo)
        for index, func in order:
            stencil = stencil.at[index].set(func)
        return stencil

    order = [(rows, top), (mask, masked)][:: 1 if data_last else -1]
    try:
        expected = reference_regions(
            relative_func(default),
            [(index, relative_func(func)) for index, func in order],
            x,
            **geo,
        )
    except ValueError:  # the input is smaller than the window
        return
    # One program for both (the data mask a leaf of the stencil passed in):
    # two eager calls compiled two programs per example. `jax.device_put`,
    # not `jnp.asarray`: the latter compiles a program per shape.
    data, static = make(jax.device_put(mask)), make(mask)
    outs = eqx.filter_jit(lambda data, x: (data(x), static(x)))(data, x)
    _check(outs[0], expected)
    _check(outs[1], expected)


# Up to 5x5: a random static label map on a 3x3 window cuts into a box per
# run of labels (their programs grow with the area); 5 cells a side already
# hold boundary windows on both sides of interior ones.
@settings(max_examples=10, deadline=None)
@given(
    shape=st.tuples(st.integers(2, 5), st.integers(2, 5)), seed=st.integers(0, 2**16)
)
def test_label_map_equals_static_masks_and_reference(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, 3, shape).astype(np.int32)
    funcs = (interior, wall, corner)
    expected = reference_regions(
        None,
        [(labels == i, relative_func(f)) for i, f in enumerate(funcs)],
        x,
        kernel_size=(3, 3),
        padding="same",
    )
    stencil = es.kmap(**HEAT)
    static = stencil.at[labels].set(funcs)  # NumPy labels: static masks
    # One program for both, the labels traced (NumPy arguments of `jit`):
    # concrete labels cost two more compiles per shape (their range check,
    # test_concrete_labels_out_of_range_are_value_errors's rule); a stencil
    # holding a concrete data region passed in is the data mask test's.
    outs = jax.jit(lambda labels, x: (stencil.at[labels].set(funcs)(x), static(x)))(
        labels, x
    )
    _check(outs[0], expected)
    _check(outs[1], expected)


def test_traced_labels_out_of_range_are_clamped():
    x = np.arange(6.0, dtype=np.float32)
    stencil = es.kmap(kernel_size=1, relative=True)
    funcs = (lambda w: w[0], lambda w: 10 * w[0], lambda w: 100 * w[0])
    labels = np.array([-5, 0, 1, 2, 3, 99], np.int32)  # traced under `jit`
    out = jax.jit(lambda lab: stencil.at[lab].set(funcs)(x))(labels)
    _check(out, np.array([0.0, 1.0, 20.0, 300.0, 400.0, 500.0]))


def test_concrete_labels_out_of_range_are_value_errors():
    stencil = es.kmap(kernel_size=1, relative=True)
    funcs = (lambda w: w[0], lambda w: -w[0])
    for labels in (jax.device_put(np.array([0, 2, 1], np.int32)), np.array([0, -1, 1])):
        with pytest.raises(ValueError, match=r"labels 0\.\.1; got labels from"):
            stencil.at[labels].set(funcs)


def test_later_wins_between_static_and_data_regions():
    x = np.zeros((1, 6), np.float32)
    mask = jax.device_put(np.array([[True, True, True, False, False, False]]))
    stencil = (
        es.kmap(lambda w: 1.0, kernel_size=1)
        .at[:, 1:5].set(lambda w: 2.0)
        .at[mask].set(lambda w: 3.0)
        .at[:, 2].set(lambda w: 4.0)
    )  # fmt: skip
    again = stencil.at[jax.device_put(np.array([[False] * 5 + [True]]))].set(
        lambda w: 5.0
    )
    first, second = jax.jit(lambda x: (stencil(x), again(x)))(x)  # one program
    _check(first, np.array([[3.0, 3.0, 4.0, 2.0, 2.0, 1.0]]))
    _check(second, np.array([[3.0, 3.0, 4.0, 2.0, 2.0, 5.0]]))


def test_smap_offset_box_wins_over_data_regions():
    x = np.arange(1.0, 7.0, dtype=np.float32)
    stencil = es.smap(lambda w: 10 * w[0], kernel_size=1, relative=True, offset=1)
    masked = stencil.at[jax.device_put(np.ones(6, bool))].set(lambda w: -w[0])
    _check(masked(x), np.array([1.0, -2, -3, -4, -5, 6]))


def _heat_reference(x, regions):
    """`interior` everywhere (zero padding), then `regions` `(index, func)`."""
    regions = [(index, relative_func(func)) for index, func in regions]
    x = np.asarray(x)
    return reference_regions(relative_func(interior), regions, x, **GRID)


def _counting(stencil_of):
    traces = []

    def run(mask, x):
        traces.append(None)
        return stencil_of(mask)(x)

    return jax.jit(run), traces


def test_ten_masks_under_one_jit_compile_once():
    x = np.ones((8, 8), np.float32)
    step = es.kmap(interior, **HEAT)
    run, traces = _counting(lambda m: step.at[m].set(wall))
    rng = np.random.default_rng(0)
    for _ in range(10):
        mask = rng.random((8, 8)) < 0.3  # NumPy arguments of `jit`: traced
        _check(run(mask, x), _heat_reference(x, [(mask, wall)]))
    assert len(traces) == 1
    assert run._cache_size() == 1


def test_stencil_as_argument_compiles_once():
    x = np.ones((6, 6), np.float32)
    step = es.kmap(interior, **HEAT)
    traces = []

    @eqx.filter_jit
    def run(stencil, x):
        traces.append(None)
        return stencil(x)

    for k in range(4):
        mask = jax.device_put(np.eye(6, k=k, dtype=bool))
        labels = jax.device_put(np.eye(6, k=k, dtype=np.int32))
        run(step.at[mask].set(wall), x)
        run(step.at[labels].set((interior, wall)), x)
    assert len(traces) == 2  # one per region kind, not per mask


def test_eager_calls_reuse_the_program_for_new_mask_values():
    x = jax.device_put(np.ones((6, 6), np.float32))
    step = es.kmap(interior, **HEAT)
    masks = [np.eye(6, k=k, dtype=bool) for k in range(4)]
    expected = [_heat_reference(x, [(mask, wall)]) for mask in masks]
    step.at[jax.device_put(masks[0])].set(wall)(x)
    before = len(_programs)
    for mask, values in zip(masks, expected):
        _check(step.at[jax.device_put(mask)].set(wall)(x), values)
    assert len(_programs) == before


def test_vmap_over_masks_is_one_program():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    batch = rng.random((4, 7, 5)) < 0.5
    step = es.kmap(interior, **HEAT).at[0, :].set(corner)
    run, traces = _counting(lambda m: step.at[m].set(wall))
    labels = rng.integers(0, 3, (4, 7, 5)).astype(np.int32)
    funcs = (interior, wall, corner)
    # Both batches in one program; NumPy results (iterating over a
    # `jax.Array` compiles an `unstack`).
    batched, outs = jax.tree.map(
        np.asarray,
        jax.jit(
            lambda batch, labels: (
                jax.vmap(run, in_axes=(0, None))(batch, x),
                jax.vmap(lambda lab: step.at[lab].set(funcs)(x))(labels),
            )
        )(batch, labels),
    )
    for mask, out in zip(batch, batched):
        _check(out, _heat_reference(x, [((0, Ellipsis), corner), (mask, wall)]))
    assert len(traces) == 1
    for label, out in zip(labels, outs):
        regions = [(label == i, f) for i, f in enumerate(funcs)]
        _check(out, _heat_reference(x, [((0, Ellipsis), corner), *regions]))


def test_map_picks_once_on_the_whole_output():
    """A map picks its data layers last, by one `select_n` over the whole
    assembled output (like `jnp.where(mask, obstacle, step(u))`), so that XLA
    fuses the tiles' assembly into that loop; picking tile by tile left the
    boundary strips' in-place writes as kernels of their own."""
    x = np.ones((8, 6), np.float32)
    mask = np.zeros((8, 6), bool)
    mask[3:5, 2:4] = True
    step = es.kmap(interior, **HEAT).at[0, :].set(corner).at[:, -1].set(wall)
    # Traced masks and labels (as in a `jit`-compiled step): no concrete-label
    # range check to compile.
    for masked_step in (
        lambda m, x: step.at[m].set(wall)(x),
        lambda m, x: step.at[m.astype(np.int32)].set((interior, wall))(x),
    ):
        jaxpr = jax.make_jaxpr(masked_step)(mask, x).jaxpr
        (out,) = jaxpr.outvars
        (last,) = [eqn for eqn in jaxpr.eqns if out in eqn.outvars]
        assert last.primitive is jax.lax.select_n_p
        assert last.outvars[0].aval.shape == x.shape
        assert all(v.aval.shape == x.shape for v in last.invars)


def test_grads_wrt_input_and_argument():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    mask = jax.device_put(rng.random((6, 5)) < 0.5)
    stencil = (
        es.kmap(lambda w, k: w[0, 0] + k * w[1, 0], **HEAT)
        .at[mask].set(lambda w, k: jnp.sin(w[0, -1]) * k)
        .at[jax.device_put(rng.integers(0, 2, (6, 5)).astype(np.int32))].set(
            (lambda w, k: k * w[0, 0] ** 2, lambda w, k: w[-1, 1])
        )
    )  # fmt: skip

    # `check_grads(stencil, (x, 0.7), order=1, modes=("fwd", "rev"))` from one
    # program instead of four.
    check_grads_in_one_program(
        stencil, (x, np.float32(0.7)), x, ("fwd", "rev"), eps=1e-2
    )


def test_unpicked_functions_give_no_nan_gradient():
    x = (np.arange(12.0, dtype=np.float32).reshape(3, 4) % 3).astype(np.float32)
    zero = x == 0  # zeros inside
    stencil = (
        es.kmap(lambda w: jnp.sqrt(w[0, 0]), **HEAT)
        .at[jax.device_put(zero)]
        .set(lambda w: 0.0)
    )
    grad = jax.jit(jax.grad(lambda x: stencil(x).sum()))(x)
    expected = np.where(zero, 0.0, 0.5 / np.sqrt(np.maximum(x, 1e-9)))
    _check(grad, expected)


def test_multi_field_with_data_mask():
    rng = np.random.default_rng(3)
    u, v = (rng.standard_normal((5, 6)).astype(np.float32) for _ in range(2))
    mask = rng.random((5, 6)) < 0.5
    base = es.kmap(lambda w: {"a": w["u"][0, 0], "b": w["v"][1, 0]}, **HEAT)
    data = base.at[jax.device_put(mask)].set(lambda w: {"a": 0.0, "b": w["u"][0, 1]})
    static = base.at[mask].set(lambda w: {"a": 0.0, "b": w["u"][0, 1]})
    out, expected = jax.jit(lambda f: (data(f), static(f)))({"u": u, "v": v})
    for key in ("a", "b"):
        _check(out[key], np.asarray(expected[key]))


@pytest.mark.parametrize(
    "func",
    [
        lambda w: w[-1, 0] + w[0, 0],  # row by row
        lambda w: 0.5 * (w[-1, 0] + w[0, -1]) + w[0, 0],  # cell by cell
    ],
    ids=["rows", "cells"],
)
def test_kscan_honours_data_regions(func):
    rng = np.random.default_rng(4)
    # 4 rows (the first, two inside, the last): a row plan with static regions
    # traces its functions per run of rows, 6 rows cost a third more.
    x = rng.random((4, 5)).astype(np.float32)
    mask = rng.random((4, 5)) < 0.4
    scan = es.kscan(func, kernel_size=3, padding="same", relative=True)
    labels = rng.integers(0, 2, (4, 5)).astype(np.int32)
    funcs = (func, lambda w: w[0, 0] - w[-1, 0])

    def run(m, lab):  # traced masks and labels, and the static ones
        return (
            scan.at[m].set(lambda w: 2 * w[0, 0])(x),
            scan.at[mask].set(lambda w: 2 * w[0, 0])(x),
            scan.at[lab].set(funcs)(x),
            scan.at[labels].set(funcs)(x),
        )

    # One program instead of four; NumPy arguments of `jit` are traced.
    data, static, data_labels, static_labels = jax.jit(run)(mask, labels)
    _check(data, np.asarray(static))
    _check(data_labels, np.asarray(static_labels))


def test_iterate_with_traced_mask():
    x = np.random.default_rng(5).random((8, 8)).astype(np.float32)
    mask = np.zeros((8, 8), bool)
    mask[3:5, 2:6] = True
    step = es.kmap(interior, **HEAT)
    actual, expected = jax.jit(  # the traced mask and the static one
        lambda m: (
            es.iterate(step.at[m].set(lambda u: 1.0), x, 20),
            es.iterate(step.at[mask].set(lambda u: 1.0), x, 20),
        )
    )(mask)
    _check(actual, np.asarray(expected))


def test_bad_data_regions():
    x = np.ones((4, 5), np.float32)
    ones, zeros = jax.device_put(np.ones((4, 5), bool)), np.zeros((4, 5), np.int32)
    zeros = jax.device_put(zeros)
    stencil = es.kmap(interior, **HEAT)
    with pytest.raises(ValueError, match=r"input's shape \(4, 5\); got \(5, 4\)"):
        stencil.at[jax.device_put(np.ones((5, 4), bool))].set(wall)(x)
    with pytest.raises(
        TypeError, match="boolean mask or an integer label map.*float32"
    ):
        stencil.at[jax.device_put(x)]
    with pytest.raises(TypeError, match="tuple of functions, one per label"):
        stencil.at[zeros].set(wall)
    with pytest.raises(TypeError, match="func must be callable"):
        stencil.at[ones].set((wall,))
    with pytest.raises(TypeError, match="func"):
        stencil.at[zeros].set((wall, 3))
    uncovered = es.kmap(kernel_size=1).at[ones].set(lambda w: 0.0)
    with pytest.raises(ValueError, match="covered by no region.*A data mask"):
        uncovered(x)


SHARDED = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import eqx_stencil as es

rng = np.random.default_rng(0)
x = rng.random((16, 12)).astype(np.float32)
mask = rng.random((16, 12)) < 0.3
base = es.kmap(lambda w: w[1, 0] - w[0, -1], kernel_size=3, padding="same",
               relative=True)
top = lambda w: 5.0
wall = lambda w: 10 * w[0, 0]
expected = base.at[0, :].set(top).at[mask].set(wall)(jnp.asarray(x))
out = {}
with jax.set_mesh(jax.make_mesh((4, 2), ("x", "y"))):
    xs = jax.device_put(x, P("x", "y"))
    run = jax.jit(lambda x, m: base.at[0, :].set(top).at[m].set(wall)(x))
    for name, m in (("sharded", jax.device_put(mask, P("x", "y"))),
                    ("replicated", jnp.asarray(mask))):
        hlo = run.lower(xs, m).compile().as_text()
        out[name] = [float(jnp.max(jnp.abs(run(xs, m) - expected))),
                     hlo.count("all-gather"), str(run(xs, m).sharding.spec)]
auto = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
stencil = es.kmap(base.func, kernel_size=3, padding="same", relative=True,
                  sharding=NamedSharding(auto, P("x", "y")))
run = jax.jit(lambda x, m: stencil.at[0, :].set(top).at[m].set(wall)(x))
hlo = run.lower(jnp.asarray(x), jnp.asarray(mask)).compile().as_text()
out["auto"] = [float(jnp.max(jnp.abs(run(x, jnp.asarray(mask)) - expected))),
               hlo.count("all-gather"), None]
print(json.dumps(out))
"""


# Breadth (tests_thorough): the fast suite checks a data mask on an input
# sharded over a 4x2 mesh against the single-device call, with no all-gather,
# in tests/test_sharding.py::test_equals_single_device[data_region]; this
# adds a mask sharded like the input and an Auto mesh (a subprocess: ~6 s).
@pytest.mark.thorough
def test_sharded_data_mask_equals_single_device():
    """On a 4x2 mesh of simulated devices: the mask (sharded like the input or
    not) gives the single-device result, with no all-gather."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    flags = os.environ.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8"
    done = subprocess.run(
        [sys.executable, "-c", SHARDED],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (error, gathers, spec) in results.items():
        assert error <= 1e-6, name
        assert gathers == 0, name
        assert spec in (None, "P('x', 'y')"), (name, spec)


def test_whole_window_and_patch_functions():
    """Functions using the whole window (and returning it) take the window
    lowering with data regions too."""
    x = np.arange(7.0, dtype=np.float32)
    mask = np.array([1, 0, 1, 1, 0, 0, 1], bool)
    patches = es.kmap(lambda w: w, kernel_size=3, padding="same")
    sums = es.kmap(lambda w: jnp.sum(w), kernel_size=3, padding="same")

    def run(m):  # the traced mask and the static one, in one program
        return (
            patches.at[m].set(lambda w: 2 * w)(x),
            patches.at[mask].set(lambda w: 2 * w)(x),
            sums.at[m].set(lambda w: jnp.max(w))(x),
            sums.at[mask].set(lambda w: jnp.max(w))(x),
        )

    data_patches, static_patches, data_sums, static_sums = jax.jit(run)(mask)
    _check(data_patches, np.asarray(static_patches))
    _check(data_sums, np.asarray(static_sums))
