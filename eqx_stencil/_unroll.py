"""Unrolled window lowering: whole-window functions at hand-written speed.

`vmap` of a whole-window function such as `jnp.sum(w * weights)` gives XLA a
reduction over a small window axis for every output position, which XLA:CPU
runs an order of magnitude slower than the unrolled sum of shifted slices an
expert writes. Here the function is traced once on an abstract window and its
jaxpr is evaluated with every window-dependent value held as a NumPy object
array of *per-position planes*: one output-shaped array per element. Elementwise
ops act plane by plane, reductions become sums of planes, indexing picks planes.
The result is exactly the hand-written program: `w[0,0]*k00 + w[0,1]*k01 + ...`.

Values that do not depend on the window (weights, constants) are evaluated as
usual. A primitive without a rule here makes `unroll` return `None`, and the
caller falls back to `vmap`.
"""

from __future__ import annotations

import functools as ft
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array


_ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp conj copy
    convert_element_type cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1
    floor ge gt imag integer_pow is_finite le lgamma log log1p logistic lt max min
    mul ne neg nextafter not or pow real reduce_precision rem round rsqrt select_n
    sign sin sinh sqrt square stop_gradient sub tan tanh xor""".split()
)
_REDUCTIONS: dict[str, Callable[[Array, Array], Array]] = {
    "reduce_sum": lax.add,
    "reduce_prod": lax.mul,
    "reduce_max": lax.max,
    "reduce_min": lax.min,
    "reduce_and": lax.bitwise_and,
    "reduce_or": lax.bitwise_or,
}
_CALLS = {
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}


class _Unsupported(Exception):
    """A window-dependent value reaches a primitive without a plane rule."""


def _planes(value: Any) -> np.ndarray:
    """An unbatched array as an object array of its scalar elements."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return value
    array = jnp.asarray(value)
    flat = array.reshape(-1)
    out = np.empty(array.size, dtype=object)
    for i in range(array.size):
        out[i] = lax.squeeze(lax.slice(flat, (i,), (i + 1,)), (0,))
    return out.reshape(array.shape)


def _fold(planes: np.ndarray, axes: Sequence[int], op: Callable) -> np.ndarray:
    keep = [axis for axis in range(planes.ndim) if axis not in axes]
    moved = np.transpose(planes, keep + list(axes))
    moved = moved.reshape(moved.shape[: len(keep)] + (-1,))
    out = np.empty(moved.shape[:-1], dtype=object)
    for index in np.ndindex(*out.shape):
        out[index] = ft.reduce(op, moved[index])
    return out


class _Interpreter:
    """Evaluates a jaxpr with batched values as object arrays of planes."""

    def __init__(self, plane_shape: tuple[int, ...]) -> None:
        self.plane_shape = plane_shape

    def _broadcast(self, scalar: Any) -> Array:
        return lax.broadcast_in_dim(scalar, self.plane_shape, ())

    def _elementwise(self, primitive: Any, invals: list, params: dict) -> np.ndarray:
        # jaxprs broadcast scalars and size-1 dims in elementwise ops: so do we.
        columns = np.broadcast_arrays(*(_planes(value) for value in invals))
        out = np.empty(columns[0].shape, dtype=object)
        for index in np.ndindex(*out.shape):
            operands = [
                op if jnp.shape(op) == self.plane_shape else self._broadcast(op)
                for op in (column[index] for column in columns)
            ]
            out[index] = primitive.bind(*operands, **params)
        return out

    def _rule(self, name: str, invals: list, params: dict) -> np.ndarray:
        (first, *rest) = [v if _is_planes(v) else _planes(v) for v in invals]
        if name in _REDUCTIONS:
            return _fold(first, params["axes"], _REDUCTIONS[name])
        if name == "broadcast_in_dim":
            shape, dims = params["shape"], params["broadcast_dimensions"]
            expanded = [1] * len(shape)
            for axis, dim in enumerate(dims):
                expanded[dim] = first.shape[axis]
            return np.broadcast_to(first.reshape(expanded), shape)
        if name == "reshape" and params.get("dimensions") is None:
            return first.reshape(params["new_sizes"])
        if name == "transpose":
            return np.transpose(first, params["permutation"])
        if name == "squeeze":
            return np.squeeze(first, axis=tuple(params["dimensions"]))
        if name == "rev":
            return np.flip(first, axis=tuple(params["dimensions"]))
        if name == "slice":
            strides = params["strides"] or (1,) * first.ndim
            return first[
                tuple(
                    slice(start, stop, step)
                    for start, stop, step in zip(
                        params["start_indices"], params["limit_indices"], strides
                    )
                )
            ]
        if name == "concatenate":
            return np.concatenate([first, *rest], axis=params["dimension"])
        if name == "dot_general":
            ((lhs_contract, rhs_contract), (lhs_batch, _)) = params["dimension_numbers"]
            if lhs_batch:
                raise _Unsupported(name)
            (rhs,) = rest
            return np.tensordot(first, rhs, axes=(lhs_contract, rhs_contract))
        raise _Unsupported(name)

    def run(self, jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list:
        env: dict[Any, Any] = {}

        def read(var: Any) -> Any:
            return var.val if isinstance(var, jex.Literal) else env[var]

        for var, value in zip(jaxpr.constvars, consts):
            env[var] = value
        for var, value in zip(jaxpr.invars, args):
            env[var] = value
        for eqn in jaxpr.eqns:
            invals = [read(var) for var in eqn.invars]
            name = eqn.primitive.name
            if not any(_is_planes(v) for v in invals):
                outvals = eqn.primitive.bind(*invals, **eqn.params)
            elif name in _CALLS:
                closed = eqn.params[_CALLS[name]]
                inner = getattr(closed, "jaxpr", closed)
                outvals = self.run(inner, getattr(closed, "consts", ()), invals)
            elif name in _ELEMENTWISE:
                outvals = self._elementwise(eqn.primitive, invals, eqn.params)
            else:
                outvals = self._rule(name, invals, eqn.params)
            if not eqn.primitive.multiple_results and name not in _CALLS:
                outvals = [outvals]
            for var, value in zip(eqn.outvars, outvals):
                env[var] = value
        return [read(var) for var in jaxpr.outvars]


def _is_planes(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == object


def _assemble(value: Any, plane_shape: tuple[int, ...]) -> Array:
    """Object array of planes (or an unbatched value) -> `plane_shape + S`."""
    if not _is_planes(value):
        value = jnp.asarray(value)
        return jnp.broadcast_to(value, plane_shape + value.shape)
    if value.ndim == 0:
        return value[()]
    flat = [jnp.broadcast_to(plane, plane_shape) for plane in value.reshape(-1)]
    return jnp.stack(flat, axis=-1).reshape(plane_shape + value.shape)


def unroll(
    func: Callable[..., Any],
    windows: Sequence[np.ndarray],
    dtypes: Sequence[Any],
    dynamic: Sequence[Any],
) -> list[Array] | None:
    """Evaluate `func(*windows, *dynamic)` with the windows given as planes.

    **Arguments:**

    - `func`: traceable function of the windows (one per field) and the
      dynamic arguments, returning a flat list of arrays.
    - `windows`: one object array of shape `kernel_size` per field, each
      element the plane (output-shaped array) of one tap.
    - `dtypes`: the windows' dtypes.
    - `dynamic`: the array arguments, unbatched.

    **Returns:**

    The flat outputs, each of shape `plane_shape + S`; or `None` when the
    function uses a primitive without a plane rule.
    """
    plane_shape = jnp.shape(windows[0].reshape(-1)[0])
    abstract = [jax.ShapeDtypeStruct(w.shape, d) for w, d in zip(windows, dtypes)]
    closed = jax.make_jaxpr(func)(*abstract, *dynamic)
    try:
        outs = _Interpreter(plane_shape).run(
            closed.jaxpr, closed.consts, [*windows, *dynamic]
        )
    except _Unsupported:
        return None
    return [_assemble(out, plane_shape) for out in outs]
