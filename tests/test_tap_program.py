"""The shift lowering's program (`_problem.record`, `TapProgram.apply`).

A function that indexes its window with integers only is traced once, when
the table records its taps, and that jaxpr is evaluated on every box's planes
(`_unroll.interpret`). Here random tap functions, drawn from the window
grammar's elementwise and custom-rule ops over taps, a weight argument and
constants, returning a scalar or a stack of values, run under the program and
under the `vmap` of the function over positions (the program switched off);
values and gradients (w.r.t. the input and the weight) must agree with each
other, and values with a NumPy loop over windows. The stencil runs as one
function (the row lowering: bands and rows) and with a second function on a
region (boxes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax import lax
from reference import reference_kmap
from test_unroll_differential import BINARY, UNARY, Op

import eqx_stencil as es
from eqx_stencil import _problem


EXAMPLES = 12
KERNEL = (3, 3)
REGION = (slice(1, 3), slice(None, None, 2))
TAPS = st.tuples(st.integers(0, 2), st.integers(0, 2))


@st.composite
def tap_values(draw, depth: int = 3) -> tuple[Op, bool]:
    """A scalar expression of the window `w` and weight `k`, and whether it
    reads a tap."""
    if depth == 0 or draw(st.booleans()):
        kind = draw(st.sampled_from(["tap", "tap*k", "k", "const"]))
        i, j = draw(TAPS)
        if kind == "tap":
            return Op(f"w[{i},{j}]", lambda w, k: w[i, j], lambda w, k: w[i, j]), True
        if kind == "tap*k":
            return (
                Op(
                    f"w[{i},{j}]*k[{i},{j}]",
                    lambda w, k: w[i, j] * k[i, j],
                    lambda w, k: w[i, j] * k[i, j],
                ),
                True,
            )
        if kind == "k":
            return Op(f"k[{i},{j}]", lambda w, k: k[i, j], lambda w, k: k[i, j]), False
        return Op("0.5", lambda w, k: 0.5, lambda w, k: np.float32(0.5)), False
    if draw(st.booleans()):
        op = draw(st.sampled_from(UNARY))
        inner, reads = draw(tap_values(depth - 1))
        return (
            Op(
                f"{op.text}({inner.text})",
                lambda w, k: op.jax_fn(jnp.asarray(inner.jax_fn(w, k))),
                lambda w, k: op.np_fn(inner.np_fn(w, k)),
            ),
            reads,
        )
    op = draw(st.sampled_from(BINARY))
    (a, reads_a), (b, reads_b) = (
        draw(tap_values(depth - 1)),
        draw(tap_values(depth - 1)),
    )
    return (
        Op(
            f"{op.text}({a.text}, {b.text})",
            lambda w, k: op.jax_fn(jnp.asarray(a.jax_fn(w, k)), b.jax_fn(w, k)),
            lambda w, k: op.np_fn(a.np_fn(w, k), b.np_fn(w, k)),
        ),
        reads_a or reads_b,
    )


@st.composite
def tap_functions(draw) -> Op:
    """A function reading at least one tap, returning a scalar or a stack of
    two values."""
    drawn, reads = draw(tap_values())
    first = drawn
    if not reads:
        i, j = draw(TAPS)
        first = Op(
            f"{drawn.text} + w[{i},{j}]",
            lambda w, k: drawn.jax_fn(w, k) + w[i, j],
            lambda w, k: drawn.np_fn(w, k) + w[i, j],
        )
    if draw(st.booleans()):
        return first
    second, _ = draw(tap_values())
    return Op(
        f"stack({first.text}, {second.text})",
        lambda w, k: jnp.stack(
            jnp.broadcast_arrays(first.jax_fn(w, k), second.jax_fn(w, k))
        ),
        lambda w, k: np.stack(
            np.broadcast_arrays(first.np_fn(w, k), second.np_fn(w, k))
        ),
    )


def _stencil(func: Callable, region: bool) -> es.Stencil:
    stencil = es.kmap(lambda w, k: func(w, k), kernel_size=KERNEL, padding="same")
    if region:
        stencil = stencil.at[REGION].set(lambda w, k: 2 * func(w, k))
    return stencil


@contextlib.contextmanager
def program_applies(enabled: bool = True) -> Iterator[list[bool]]:
    """Within: whether each `TapProgram.apply` gave the function's values
    (with `enabled` false none does: the function runs under `vmap`)."""
    applied: list[bool] = []
    apply = _problem.TapProgram.apply

    def spy(self: Any, *args: Any) -> Any:
        out = apply(self, *args) if enabled else None
        applied.append(out is not None)
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_problem.TapProgram, "apply", spy)
        yield applied


def run(func: Callable, x: np.ndarray, k: np.ndarray, region: bool) -> dict:
    """`program on? -> (value, gradients)`, asserting that with the program on
    it evaluated every box, and with it off none. One compiled program."""
    applied: dict[bool, list[bool]] = {}

    def under(on: bool, x: jax.Array, k: jax.Array) -> tuple:
        with program_applies(on) as applied[on]:
            stencil = _stencil(func, region)

            def total(x: jax.Array, k: jax.Array) -> tuple:
                value = stencil(x, k)
                return jnp.sum(value), value

            (_, value), grads = jax.value_and_grad(total, (0, 1), has_aux=True)(x, k)
        return value, grads

    out = jax.jit(lambda x, k: {on: under(on, x, k) for on in (True, False)})(x, k)
    assert applied[True] and all(applied[True]), applied
    assert applied[False] and not any(applied[False]), applied
    return out


def expected(np_fn: Callable, x: np.ndarray, k: np.ndarray, region: bool) -> np.ndarray:
    """NumPy: `np_fn` on every window, twice it on `REGION`'s anchors."""
    out = reference_kmap(lambda w: np_fn(w, k), x, KERNEL, padding="same")
    if not region:
        return out
    mask = np.zeros(x.shape, bool)
    mask[REGION] = True
    mask = mask.reshape(mask.shape + (1,) * (out.ndim - mask.ndim))
    return np.where(mask, 2 * out, out)


def _inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 6))
    x = np.where(rng.random(x.shape) < 0.2, 0.0, x)  # ties and kinks
    return x.astype(np.float32), rng.normal(size=KERNEL).astype(np.float32)


@pytest.mark.parametrize("region", [False, True], ids=["rows", "regions"])
@settings(max_examples=EXAMPLES, deadline=None)
@given(fn=tap_functions(), seed=st.integers(0, 2**16))
def test_program_matches_vmap_and_numpy(region, fn, seed):
    x, k = _inputs(seed)
    (value, grads), (ref_value, ref_grads) = run(fn.jax_fn, x, k, region).values()
    assert value.dtype == ref_value.dtype, fn.text
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5, err_msg=fn.text)
    np.testing.assert_allclose(
        value, expected(fn.np_fn, x, k, region), rtol=1e-4, atol=1e-4, err_msg=fn.text
    )
    for grad, ref_grad in zip(grads, ref_grads):
        np.testing.assert_allclose(
            grad, ref_grad, rtol=1e-5, atol=1e-5, err_msg=fn.text
        )


def test_a_tap_function_is_traced_once_per_call():
    calls = {"default": 0, "region": 0}

    def counted(name: str, scale: float) -> Callable:
        def func(x: Any) -> Any:
            calls[name] += 1
            return scale * (x[0, 1] + x[2, 1] + x[1, 0] + x[1, 2] - 4 * x[1, 1])

        return func

    stencil = es.kmap(counted("default", 1.0), kernel_size=KERNEL, padding="same")
    x = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    jax.jit(stencil).trace(x)
    assert calls == {"default": 1, "region": 0}
    regions = stencil.at[::3].set(counted("region", 2.0))
    jax.jit(regions).trace(x)
    assert calls == {"default": 2, "region": 1}


@jax.custom_jvp
def _clipped(x: jax.Array) -> jax.Array:
    return jnp.clip(x, -1.0, 1.0)


@_clipped.defjvp
def _clipped_jvp(primals: tuple, tangents: tuple) -> tuple:
    # Straight through: the rule's tangent is not the clip's derivative.
    return _clipped(primals[0]), 3.0 * tangents[0]


def test_custom_rules_survive_the_program():
    stencil = es.kmap(
        lambda w: _clipped(w[0, 0] + w[1, 1]), kernel_size=KERNEL, padding="same"
    )
    x = 5.0 * np.ones((4, 5), np.float32)  # clipped everywhere
    grad = jax.grad(lambda x: jnp.sum(stencil(x)))(x)
    # Element (i, j) is tap (1, 1) of the window anchored there and tap (0, 0)
    # of the one anchored at (i + 1, j + 1), if any: the rule's 3 per read.
    expected_grad = np.full(x.shape, 3.0, np.float32)
    expected_grad[:-1, :-1] += 3.0
    np.testing.assert_allclose(grad, expected_grad)


# (jax function of the window and weight, NumPy function of the window and weight)
WITHOUT_PLANE_RULES = {
    "sort": (
        lambda w, k: jnp.sort(jnp.stack([w[0, 0], w[1, 1] * k[0, 0], w[2, 2]]))[1],
        lambda w, k: np.sort([w[0, 0], w[1, 1] * k[0, 0], w[2, 2]])[1],
    ),
    "cond": (
        lambda w, k: lax.cond(k[0, 0] > 0, lambda: w[0, 1], lambda: w[1, 0]),
        lambda w, k: w[0, 1] if k[0, 0] > 0 else w[1, 0],
    ),
    "effect": (
        lambda w, k: jax.debug.callback(lambda *_: None, w[1, 1]) or w[1, 1] * k[1, 1],
        lambda w, k: w[1, 1] * k[1, 1],
    ),
}


@pytest.mark.parametrize("name", list(WITHOUT_PLANE_RULES))
def test_functions_without_plane_rules_fall_back_to_vmap(name):
    func, np_func = WITHOUT_PLANE_RULES[name]
    x, k = _inputs(3)
    with program_applies() as tried:
        out = jax.jit(_stencil(func, region=False))(x, k)
    assert not any(tried)
    expected_out = reference_kmap(lambda w: np_func(w, k), x, KERNEL, padding="same")
    np.testing.assert_allclose(out, expected_out, rtol=1e-6)


def test_pytree_outputs_and_static_arguments():
    x, k = _inputs(4)

    def func(w: Any, k: jax.Array, scale: float, *, offset: np.ndarray) -> dict:
        return {"a": scale * w[0, 0] * k[1, 1], "b": (w[2, 2] + offset[0], w[1, 1] > 0)}

    stencil = es.kmap(func, kernel_size=KERNEL, padding="same")
    out = jax.jit(lambda x, k: stencil(x, k, 2.0, offset=np.array([1.5], np.float32)))(
        x, k
    )
    windows = reference_kmap(lambda w: w, x, KERNEL, padding="same")
    np.testing.assert_allclose(out["a"], 2.0 * windows[..., 0, 0] * k[1, 1], rtol=1e-6)
    np.testing.assert_allclose(out["b"][0], windows[..., 2, 2] + 1.5, rtol=1e-6)
    np.testing.assert_array_equal(out["b"][1], windows[..., 1, 1] > 0)


def test_kernels_over_the_tap_limit_run_under_vmap(monkeypatch):
    """A kernel with more taps than `MAX_PROGRAM_TAPS` (whose windows the
    program would hold as object arrays of that size) runs the function
    under `vmap`, with the same values."""
    x, k = _inputs(5)
    func = lambda w, k: w[0, 0] * k[1, 1] - w[2, 1]  # noqa: E731
    expected_out = np.asarray(jax.jit(_stencil(func, region=True))(x, k))
    monkeypatch.setattr(_problem, "MAX_PROGRAM_TAPS", 8)  # a 3x3 window: 9
    with program_applies() as applied:  # a fresh stencil: traced anew
        out = jax.jit(_stencil(func, region=True))(x, k)
    assert applied and not any(applied)
    np.testing.assert_array_equal(out, expected_out)
