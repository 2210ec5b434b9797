"""The unrolled window lowering against the `vmap` lowering and NumPy.

Random whole-window functions are drawn from a small grammar of `jnp`, `lax`
and `jax.nn` operations (elementwise ops, comparisons with scalars, `where`,
reductions, dots with several dtypes including int8 -> int32 and bf16 -> f32
accumulation, custom-derivative functions). Each one runs through a stencil
under the unrolled lowering (asserted to have applied) and under the `vmap`
lowering; values are compared with each other and with a NumPy loop over
windows, gradients of the summed output (w.r.t. the input and a weight
argument) with each other and, for custom rules, with the rule's own value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from gradcheck import check_grads_in_one_program
from hypothesis import given, settings, strategies as st
from jax import lax
from reference import reference_kmap

import eqx_stencil as es
from eqx_stencil import _lower


EXAMPLES = 25


@jax.custom_jvp
def safe_norm(x: jax.Array) -> jax.Array:
    """A norm whose derivative at 0 is 0 (plain autodiff gives NaN there)."""
    return jnp.sqrt(jnp.sum(x**2))


@safe_norm.defjvp
def _safe_norm_jvp(primals: tuple, tangents: tuple) -> tuple:
    (x,), (dx,) = primals, tangents
    norm = safe_norm(x)
    nonzero = norm > 0
    return norm, jnp.where(nonzero, jnp.sum(x * dx) / jnp.where(nonzero, norm, 1), 0)


def _np_logsumexp(x: np.ndarray) -> np.ndarray:
    top = np.max(x)
    return top + np.log(np.sum(np.exp(x - top)))


def _quantize(x: Any, lib: Any) -> Any:
    return lib.clip(lib.round(x * 40), -128, 127).astype(lib.int8)


class Op(NamedTuple):
    text: str
    jax_fn: Callable
    np_fn: Callable


UNARY = [
    Op("abs", jnp.abs, np.abs),
    Op("tanh", jnp.tanh, np.tanh),
    Op("exp", lambda x: jnp.exp(jnp.tanh(x)), lambda x: np.exp(np.tanh(x))),
    Op("relu", jax.nn.relu, lambda x: np.maximum(x, 0)),
    Op("softplus", jax.nn.softplus, lambda x: np.logaddexp(x, 0)),
    Op(
        "leaky",
        lambda x: jnp.where(x > 0, x, 0.1 * x),
        lambda x: np.where(x > 0, x, 0.1 * x),
    ),
    Op(
        "zero_to_one",
        lambda x: jnp.where(x == 0.0, 1.0, x),
        lambda x: np.where(x == 0.0, 1.0, x),
    ),
    Op("not_half", lambda x: (x != 0.5) * x, lambda x: (x != 0.5) * x),
]
BINARY = [
    Op("add", lambda a, b: a + b, lambda a, b: a + b),
    Op("mul", lambda a, b: a * b, lambda a, b: a * b),
    Op("maximum", jnp.maximum, np.maximum),
    Op(
        "larger",
        lambda a, b: jnp.where(a > b, a, b),
        lambda a, b: np.where(a > b, a, b),
    ),
]
LEAVES = [
    Op("w", lambda w, k: w, lambda w, k: w),
    Op("w*k", lambda w, k: w * k, lambda w, k: w * k),
    Op("k-w", lambda w, k: k - w, lambda w, k: k - w),
]
# Window-shaped float value -> output; `k` is the weight argument.
REDUCTIONS = [
    Op("sum", lambda x, k: jnp.sum(x), lambda x, k: np.sum(x)),
    Op("max", lambda x, k: jnp.max(x), lambda x, k: np.max(x)),
    Op("min", lambda x, k: jnp.min(x, axis=0), lambda x, k: np.min(x, axis=0)),
    Op("mean", lambda x, k: jnp.mean(x), lambda x, k: np.mean(x)),
    Op(
        "prod",
        lambda x, k: jnp.prod(jnp.tanh(x), axis=1),
        lambda x, k: np.prod(np.tanh(x), axis=1),
    ),
    Op("logsumexp", lambda x, k: jax.nn.logsumexp(x), lambda x, k: _np_logsumexp(x)),
    Op("safe_norm", lambda x, k: safe_norm(x), lambda x, k: np.sqrt(np.sum(x**2))),
    Op(
        "dot",
        lambda x, k: jnp.dot(x.reshape(-1), k.reshape(-1)),
        lambda x, k: np.dot(x.reshape(-1), k.reshape(-1)),
    ),
    Op(
        "dot_highest",
        lambda x, k: lax.dot_general(  # lax needs a plain array: jnp.asarray
            jnp.asarray(x),
            k,
            (((0, 1), (0, 1)), ((), ())),
            precision=lax.Precision.HIGHEST,
        ),
        lambda x, k: np.sum(x * k),
    ),
    Op("tensordot", lambda x, k: jnp.tensordot(x, k, 2), lambda x, k: np.sum(x * k)),
    Op(
        "einsum",
        lambda x, k: jnp.einsum("ij,ij->i", x, k),
        lambda x, k: np.einsum("ij,ij->i", x, k),
    ),
    Op("matmul", lambda x, k: x @ k.T, lambda x, k: x @ k.T),
]
# Functions of the raw window and weight with another dtype.
DTYPE_CASES = [
    Op(
        "int8->int32",
        lambda w, k: jnp.dot(
            _quantize(w, jnp).reshape(-1),
            _quantize(k, jnp).reshape(-1),
            preferred_element_type=jnp.int32,
        ),
        lambda w, k: np.dot(
            _quantize(w, np).reshape(-1).astype(np.int32),
            _quantize(k, np).reshape(-1).astype(np.int32),
        ),
    ),
    Op(
        "int8",
        lambda w, k: jnp.dot(
            _quantize(w, jnp).reshape(-1), _quantize(k, jnp).reshape(-1)
        ),
        lambda w, k: np.dot(
            _quantize(w, np).reshape(-1).astype(np.int32),
            _quantize(k, np).reshape(-1).astype(np.int32),
        ).astype(np.int8),
    ),
    Op(
        "bf16->f32",
        lambda w, k: jnp.dot(
            w.astype(jnp.bfloat16).reshape(-1),
            k.astype(jnp.bfloat16).reshape(-1),
            preferred_element_type=jnp.float32,
        ),
        lambda w, k: np.dot(
            w.astype(ml_dtypes.bfloat16).astype(np.float32).reshape(-1),
            k.astype(ml_dtypes.bfloat16).astype(np.float32).reshape(-1),
        ),
    ),
]


SMOOTH_UNARY = [op for op in UNARY if op.text in ("tanh", "exp", "softplus")]
SMOOTH_BINARY = [op for op in BINARY if op.text in ("add", "mul")]
SMOOTH_REDUCTIONS = [op for op in REDUCTIONS if op.text not in ("max", "min")]


@st.composite
def window_values(draw, depth: int = 3, smooth: bool = False) -> Op:
    """A window-shaped float expression of the window `w` and weight `k`."""
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(LEAVES))
    unary, binary = (SMOOTH_UNARY, SMOOTH_BINARY) if smooth else (UNARY, BINARY)
    if draw(st.booleans()):
        op = draw(st.sampled_from(unary))
        inner = draw(window_values(depth - 1, smooth))
        return Op(
            f"{op.text}({inner.text})",
            lambda w, k: op.jax_fn(inner.jax_fn(w, k)),
            lambda w, k: op.np_fn(inner.np_fn(w, k)),
        )
    op = draw(st.sampled_from(binary))
    a, b = (
        draw(window_values(depth - 1, smooth)),
        draw(window_values(depth - 1, smooth)),
    )
    return Op(
        f"{op.text}({a.text}, {b.text})",
        lambda w, k: op.jax_fn(a.jax_fn(w, k), b.jax_fn(w, k)),
        lambda w, k: op.np_fn(a.np_fn(w, k), b.np_fn(w, k)),
    )


@st.composite
def window_functions(draw, smooth: bool = False) -> Op:
    """A whole-window function: a reduction of a window value, then maybe an
    elementwise op (often a custom-rule activation) on the result."""
    value = draw(window_values(smooth=smooth))
    reduction = draw(st.sampled_from(SMOOTH_REDUCTIONS if smooth else REDUCTIONS))
    post = draw(st.sampled_from([None, *(SMOOTH_UNARY if smooth else UNARY)]))
    fn = Op(
        f"{reduction.text}({value.text})",
        lambda w, k: reduction.jax_fn(value.jax_fn(w, k), k),
        lambda w, k: reduction.np_fn(value.np_fn(w, k), k),
    )
    if post is None:
        return fn
    return Op(
        f"{post.text}({fn.text})",
        lambda w, k: post.jax_fn(fn.jax_fn(w, k)),
        lambda w, k: post.np_fn(fn.np_fn(w, k)),
    )


LOWERINGS = ("unrolled", "vmap")
# The unrolled lowering writes every operation once per tap and per box, so a
# program's size (its compile time) grows with the boxes. The fast suite's
# geometry pads one side: an interior box and one boundary strip (windows
# reading padding, the input's cotangent added into the interior's), each
# running the lowering. "same" (an interior and four strips: 2.5 times the
# program) adds more of the same boxes: `--thorough` only.
STRIP = ((1, 0), (0, 0))
PADDINGS = [
    pytest.param(STRIP, id="strip"),
    pytest.param("same", id="same", marks=pytest.mark.thorough),
]
# The random functions: in the fast suite on the interior box alone (every
# operation's plane rules; the deterministic tests below run the strip too),
# under `--thorough` on all five boxes of "same".
FUNCTION_PADDINGS = [
    pytest.param(0, id="interior"),
    pytest.param("same", id="same", marks=pytest.mark.thorough),
]


def run(func: Callable, x: jax.Array, k: jax.Array, padding: Any = STRIP) -> dict:
    """`lowering -> (value, gradients)`: the value of a stencil of `func` and
    the gradients of its summed output (w.r.t. `x` and `k`) under each window
    lowering; asserts that it is the lowering that ran. Both lowerings are
    traced into one compiled program (one compile per call, not four)."""
    applied: dict[str, list[bool]] = {lowering: [] for lowering in LOWERINGS}

    def under(lowering: str, x: jax.Array, k: jax.Array) -> tuple:
        with pytest.MonkeyPatch.context() as patch:
            if lowering == "vmap":
                patch.setattr(_lower, "MAX_UNROLLED_TAPS", -1)
            unroll = _lower.unroll

            def spy(*args, **kwargs):
                out = unroll(*args, **kwargs)
                applied[lowering].append(out is not None)
                return out

            patch.setattr(_lower, "unroll", spy)
            # A fresh function each time: nothing traced under one lowering is
            # reused under the other.
            stencil = es.kmap(
                lambda w, k: func(w, k), kernel_size=k.shape, padding=padding
            )

            def total(x, k):
                value = stencil(x, k)
                return jnp.sum(value.astype(jnp.float32)), value

            (_, value), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
                x, k
            )
        return value, grads

    out = jax.jit(
        lambda x, k: {lowering: under(lowering, x, k) for lowering in LOWERINGS}
    )(x, k)
    # The stencil's boxes (interior, boundary strips) each ran the lowering.
    for lowering, ran in applied.items():
        assert all(ran) and bool(ran) == (lowering == "unrolled"), (lowering, ran)
    return out


def _inputs(
    seed: int, shape: tuple[int, ...], kernel: tuple[int, ...], zeros: bool = True
):
    # NumPy: eager `jax.random` compiled a few small programs per example, and
    # `jnp.asarray` one per shape; `jit` takes NumPy arguments, and the finite
    # differences of `check_vjp` then add and subtract in NumPy.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    if zeros:  # ties, kinks and the special points of custom rules
        x = np.where(rng.random(shape) < 0.2, 0.0, x)
    k = rng.normal(size=kernel)
    return x.astype(np.float32), k.astype(np.float32)


@pytest.mark.parametrize("padding", FUNCTION_PADDINGS)
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    fn=window_functions(),
    kernel=st.sampled_from([(3, 3), (2, 3)]),
    seed=st.integers(0, 2**16),
)
def test_unrolled_matches_vmap_and_numpy(padding, fn, kernel, seed):
    x, k = _inputs(seed, (5, 6), kernel)
    (value, grads), (ref_value, ref_grads) = run(fn.jax_fn, x, k, padding).values()
    expected = reference_kmap(lambda p: fn.np_fn(p, k), x, kernel, padding=padding)
    assert value.dtype == ref_value.dtype, fn.text
    np.testing.assert_allclose(value, ref_value, rtol=1e-4, atol=1e-4, err_msg=fn.text)
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4, err_msg=fn.text)
    for grad, ref_grad in zip(grads, ref_grads):
        np.testing.assert_allclose(
            grad, ref_grad, rtol=1e-4, atol=1e-4, err_msg=fn.text
        )


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("case", DTYPE_CASES, ids=lambda case: case.text)
def test_dtypes_and_accumulation_match(case, padding):
    x, k = _inputs(0, (6, 7), (3, 3))
    x, k = 2 * x, 2 * k  # int8 products overflow int8, their sums do too
    (value, grads), (ref_value, ref_grads) = run(case.jax_fn, x, k, padding).values()
    expected = reference_kmap(lambda p: case.np_fn(p, k), x, (3, 3), padding=padding)
    assert value.dtype == ref_value.dtype == expected.dtype
    if jnp.issubdtype(value.dtype, jnp.integer):
        np.testing.assert_array_equal(value, ref_value)
        np.testing.assert_array_equal(value, expected)
    else:
        np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
        for grad, ref_grad in zip(grads, ref_grads):
            # Cotangents in bf16: each of the 9 terms rounded once (2**-8).
            atol = 9 * 2**-8 * float(np.max(np.abs(ref_grad)))
            np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=atol)


@pytest.mark.parametrize(
    "func, rule",
    [
        (lambda w, k: safe_norm(w * k), 0.0),  # plain autodiff: NaN
        (lambda w, k: jax.nn.relu(jnp.sum(w * k)), 0.0),  # max(x, 0): 0.5
    ],
    ids=["safe_norm", "relu"],
)
@pytest.mark.parametrize("padding", PADDINGS)
def test_custom_rules_are_kept_at_their_special_points(func, rule, padding):
    x, k = np.zeros((5, 6), np.float32), np.ones((3, 3), np.float32)
    for _, (grad_x, grad_k) in run(func, x, k, padding).values():
        np.testing.assert_array_equal(grad_x, rule)
        np.testing.assert_array_equal(grad_k, rule)


@settings(max_examples=10, deadline=None)
@given(fn=window_functions(smooth=True), seed=st.integers(0, 2**16))
def test_unrolled_gradients_match_finite_differences(fn, seed):
    x, k = _inputs(seed, (5, 6), (3, 3), zeros=False)
    stencil = es.kmap(fn.jax_fn, kernel_size=3)

    # `check_grads(total, (x, k), order=1, modes=["rev"])` from one program
    # instead of three.
    check_grads_in_one_program(
        lambda x, k: jnp.sum(stencil(x, k)),
        (x, k),
        np.float32(0),
        ("rev",),
        atol=5e-2,
        rtol=5e-2,
        eps=1e-2,
    )


def _debug(w: Any, k: Any) -> jax.Array:
    jax.debug.callback(lambda *_: None, w)
    return jnp.sum(w * k)


@pytest.mark.parametrize(
    "func",
    [
        _debug,  # an effect
        lambda w, k: jnp.sort(w.reshape(-1))[4] * k[0, 0],  # no plane rule
        lambda w, k: jnp.dot(  # bf16 accumulation
            w.astype(jnp.bfloat16).reshape(-1), k.astype(jnp.bfloat16).reshape(-1)
        ).astype(jnp.float32),
        lambda w, k: lax.dot_general(  # a dot algorithm
            jnp.asarray(w),
            k,
            (((0, 1), (0, 1)), ((), ())),
            precision=lax.DotAlgorithmPreset.BF16_BF16_F32,
        ),
        lambda w, k: lax.reduce_sum(  # a narrow-float sum
            (w * k).astype(jnp.float16), (0, 1)
        ).astype(jnp.float32),
    ],
    ids=["effect", "sort", "bf16_accumulation", "dot_algorithm", "f16_sum"],
)
@pytest.mark.parametrize("padding", PADDINGS)
def test_functions_without_exact_rules_fall_back_to_vmap(
    func, padding, monkeypatch, unroll_applied
):
    x, k = _inputs(1, (5, 6), (3, 3))
    applied = unroll_applied
    tried: list[bool] = []

    def both(x, k):  # one program for both stencils, not one per eager call
        out = es.kmap(func, kernel_size=3, padding=padding)(x, k)
        tried.extend(applied)  # the default stencil's attempts only
        monkeypatch.setattr(_lower, "MAX_UNROLLED_TAPS", -1)
        stencil = es.kmap(lambda w, k: func(w, k), kernel_size=3, padding=padding)
        return out, stencil(x, k)

    out, expected = jax.jit(both)(x, k)
    assert tried and not any(tried)
    np.testing.assert_array_equal(out, expected)
