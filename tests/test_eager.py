"""Calls outside a trace are eager: every call reads the current globals,
closure cells, captured arrays, arguments and attributes (nothing traced for
one call is reused for another), yet an unchanged program is not recompiled.
See `eqx_stencil/_call.py`."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_stencil as es
from eqx_stencil import _call


X = jnp.array([1.0, 2.0, 3.0, 4.0])
SCALE = 1.0


@contextlib.contextmanager
def compilations():
    """Count the XLA compilations in the block (`jax_log_compiles` messages)."""
    count = [0]

    class Counter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Compiling"):
                count[0] += 1

    logger = logging.getLogger("jax")
    handler = Counter(logging.DEBUG)
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield count
    finally:
        logger.removeHandler(handler)


def test_global_is_read_at_every_call():
    global SCALE
    stencil = es.kmap(lambda u: SCALE * u[0], kernel_size=1)
    SCALE = 1.0
    np.testing.assert_array_equal(stencil(X), X)
    SCALE = 2.0
    np.testing.assert_array_equal(stencil(X), 2 * X)
    SCALE = 1.0


def test_closure_cell_is_read_at_every_call():
    alpha = 1.0
    stencil = es.kmap(lambda u: alpha * u[0], kernel_size=1)
    np.testing.assert_array_equal(stencil(X), X)
    alpha = 3.0
    np.testing.assert_array_equal(stencil(X), 3 * X)


def test_captured_numpy_array_mutated_in_place():
    weights = np.array([1.0, 0.0, 0.0], np.float32)
    stencil = es.kmap(lambda u: jnp.dot(jnp.asarray(weights), u), kernel_size=3)
    np.testing.assert_array_equal(stencil(X), [1.0, 2.0])
    weights[:] = [0.0, 0.0, 1.0]
    np.testing.assert_array_equal(stencil(X), [3.0, 4.0])


def test_mutable_list_argument():
    coefficients = [1.0]
    stencil = es.kmap(lambda u, c: c[0] * u[0], kernel_size=1)
    np.testing.assert_array_equal(stencil(X, coefficients), X)
    coefficients[0] = 5.0
    np.testing.assert_array_equal(stencil(X, coefficients), 5 * X)


@dataclasses.dataclass
class Coefficient:  # mutable, so unhashable (`__hash__` is None)
    value: float


def test_mutable_dataclass_argument():
    coefficient = Coefficient(1.0)
    stencil = es.kmap(lambda u, c: c.value * u[0], kernel_size=1)
    np.testing.assert_array_equal(stencil(X, coefficient), X)
    coefficient.value = -1.0
    np.testing.assert_array_equal(stencil(X, c=coefficient), -X)


def test_function_attribute():
    def func(u):
        return func.scale * u[0]

    func.scale = 1.0
    stencil = es.kmap(func, kernel_size=1)
    np.testing.assert_array_equal(stencil(X), X)
    func.scale = 4.0
    np.testing.assert_array_equal(stencil(X), 4 * X)


@dataclasses.dataclass
class Scaled:  # a callable, unhashable function
    scale: float

    def __call__(self, u):
        return self.scale * u[0]


def test_unhashable_callable_function_and_its_state():
    func = Scaled(2.0)
    stencil = es.kmap(func, kernel_size=3, padding="same", relative=True)
    np.testing.assert_array_equal(stencil(X), 2 * X)
    func.scale = 3.0
    np.testing.assert_array_equal(stencil(X), 3 * X)


class Unhashable:
    __hash__ = None  # pyright: ignore[reportAssignmentType]

    def __init__(self, value: float) -> None:
        self.value = value


def test_unhashable_argument_under_every_kind():
    arg = Unhashable(2.0)
    for stencil in [
        es.kmap(lambda u, a: a.value * u[0], kernel_size=1),
        es.smap(lambda u, a: a.value * u[0], kernel_size=1),
        es.kscan(lambda u, a: a.value * u[0], kernel_size=1),
        es.sscan(lambda u, a: a.value * u[0], kernel_size=1),
    ]:
        np.testing.assert_array_equal(stencil(X, arg), 2 * X)


def test_unchanged_state_is_not_recompiled():
    weights = np.array([1.0, 2.0, 3.0], np.float32)
    stencil = es.kmap(
        lambda u, k: k * jnp.dot(jnp.asarray(weights), u), kernel_size=3, padding=1
    )
    x = jnp.arange(8.0)
    with compilations() as count:
        first = stencil(x, jnp.float32(0.5))
    assert count[0] >= 1
    with compilations() as count:
        for _ in range(3):
            again = stencil(x, jnp.float32(0.5))
        weights[0] = 7.0  # new values, same program: reused
        changed = stencil(x, jnp.float32(0.5))
    assert count[0] == 0
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(changed, first + 0.5 * 6.0 * np.pad(x, 1)[:-2])


def test_changed_program_is_compiled_anew():
    scale = 1.25  # values no other test compiles
    stencil = es.kmap(lambda u: scale * u[0], kernel_size=1)
    stencil(X)
    scale = 2.75
    with compilations() as count:
        out = stencil(X)
    assert count[0] >= 1
    np.testing.assert_array_equal(out, 2.75 * X)


def test_pure_callbacks_of_one_name_are_distinct_programs():
    """Parameters printed alike (two closures of one function) still differ."""

    def make(c):
        def callback(v):
            return np.asarray(v) * c

        return lambda u: jax.pure_callback(
            callback, jax.ShapeDtypeStruct((), u.dtype), u[0], vmap_method="sequential"
        )

    one = es.kmap(make(1.0), kernel_size=1)(X)
    two = es.kmap(make(2.0), kernel_size=1)(X)
    np.testing.assert_array_equal(one, X)
    np.testing.assert_array_equal(two, 2 * X)


def test_fingerprint_tells_literals_and_constants_apart():
    def key(f, *args):
        return _call.fingerprint(jax.make_jaxpr(f)(*args).jaxpr)

    x = jnp.ones(3)
    assert key(lambda v: v * 2.0, x) == key(lambda v: v * 2.0, x)
    assert key(lambda v: v * 2.0, x) != key(lambda v: v * 3.0, x)
    assert key(lambda v: v * 2.0, x) != key(lambda v: v * 2.0, jnp.ones(4))
    assert key(lambda v: v + 1, x) != key(lambda v: v - 1, x)
    assert key(lambda v: v * 2, jnp.ones(3, jnp.int32)) != key(
        lambda v: v * 2, jnp.ones(3, jnp.int16)
    )


def test_inside_a_trace_the_stencil_is_inlined():
    stencil = es.kmap(lambda u, k: k * u[0], kernel_size=1)
    before = len(_call._programs)
    out = jax.jit(lambda x, k: stencil(x, k))(X, 2.0)
    grads = jax.grad(lambda k: jnp.sum(stencil(X, k)))(1.0)
    batched = jax.vmap(stencil, in_axes=(0, None))(jnp.stack([X, 2 * X]), 3.0)
    assert len(_call._programs) == before  # no program of its own
    np.testing.assert_array_equal(out, 2 * X)
    np.testing.assert_allclose(grads, jnp.sum(X))
    np.testing.assert_array_equal(batched, [3 * X, 6 * X])


def test_pytree_output_and_multi_field_input_eagerly():
    stencil = es.kmap(
        lambda w: {"sum": w[0][0] + w[1][0], "diff": w[0][0] - w[1][0]},
        kernel_size=1,
    )
    out = stencil((X, 2 * X))
    np.testing.assert_array_equal(out["sum"], 3 * X)
    np.testing.assert_array_equal(out["diff"], -X)


# --------------------------------------------------------------------------
# The decorator form is decided by the stencil and the argument, not by
# `callable(argument)`.


class State(eqx.Module):
    u: jax.Array
    v: jax.Array

    def __call__(self) -> jax.Array:
        return self.u + self.v


def test_callable_module_of_fields_is_input():
    stencil = es.kmap(lambda w: w.u[0] * w.v[0], kernel_size=1)
    out = stencil(State(X, 2 * X))
    np.testing.assert_array_equal(out, 2 * X * X)


def test_callable_module_of_arrays_on_a_stencil_without_function_is_input():
    with pytest.raises(ValueError, match="has no function"):
        es.kmap(kernel_size=1)(State(X, X))


def test_decorator_form_needs_no_function_yet():
    plain = es.kmap(kernel_size=1)(lambda u: 2 * u[0])
    assert isinstance(plain, es.Map)
    np.testing.assert_array_equal(plain(X), 2 * X)
    with pytest.raises(
        TypeError, match=r"already has a function[\s\S]*dataclasses.replace"
    ):
        plain(lambda u: u[0])


def test_module_function_holding_arrays_given_as_func():
    class Weighted(eqx.Module):
        weight: jax.Array

        def __call__(self, u):
            return self.weight * u[0]

    stencil = es.kmap(Weighted(jnp.array(3.0)), kernel_size=1)
    np.testing.assert_array_equal(stencil(X), 3 * X)


def _laplacian(u):
    return u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]


# Every kind of stencil, each on a shape no other test uses (so no primitive's
# program is cached already): a map with a region, a sweep, the
# shape-preserving map and sweep.
KINDS = {
    "kmap": (
        lambda: (
            es.kmap(_laplacian, kernel_size=3, padding="same", relative=True)
            .at[0, :]
            .set(lambda u: 0.0 * u[0, 0])
        ),
        (13, 17),
    ),
    "kscan": (
        lambda: es.kscan(_laplacian, kernel_size=3, padding="same", relative=True),
        (11, 19),
    ),
    "smap": (
        lambda: es.smap(_laplacian, kernel_size=3, offset=1, relative=True),
        (17, 13),
    ),
    "sscan": (
        lambda: es.sscan(_laplacian, kernel_size=3, offset=1, relative=True),
        (19, 11),
    ),
}


@pytest.mark.parametrize(
    "kind, transform",
    [
        (kind, transform)
        if kind == "kmap" or transform == "grad"
        # the other kinds' vmap and jvp: one program as for kmap's, by the
        # same path (`_call.run`)
        else pytest.param(kind, transform, marks=pytest.mark.thorough)
        for kind in KINDS
        for transform in ("grad", "vmap", "jvp")
    ],
)
def test_eager_transformations_run_the_stencil_as_one_program(kind, transform):
    """`jax.grad(f)(x)` outside `jit`: the stencil is one compiled program, not
    one per primitive (the getting-started Laplacian's gradient compiled 200
    programs, 17 s)."""
    make, shape = KINDS[kind]
    stencil = make()
    u = jnp.linspace(0.0, 1.0, math.prod(shape)).reshape(shape)
    runs = {
        "grad": lambda: jax.grad(lambda u: jnp.sum(stencil(u)))(u),
        "vmap": lambda: jax.vmap(stencil)(jnp.stack([u, u])),
        "jvp": lambda: jax.jvp(stencil, (u,), (u,)),
    }
    with compilations() as count:
        jax.block_until_ready(runs[transform]())
    # the stencil's program(s) (forward, and the transpose for grad) and a
    # few programs of the surrounding ops (sum, ones, stack)
    assert count[0] <= 6, count[0]
