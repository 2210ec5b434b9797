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
usual. Every window-dependent equation either has a rule here that reproduces
the primitive exactly (all its parameters: result and accumulation dtypes,
shardings, layouts) or `unroll` returns `None` and the caller falls back to
`vmap`. Two kinds of equation keep their meaning by construction instead:
custom derivative rules (`custom_jvp_call`, `custom_vjp_call`) and `remat` run
under `jax.vmap` over the positions, exactly as the `vmap` lowering would run
them, so their rules and policies survive. A function with effects (debug
callbacks, ordered IO) always falls back.
"""

from __future__ import annotations

import functools as ft
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array


_ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh bessel_i0e bessel_i1e cbrt
    ceil clamp clz complex conj copy convert_element_type cos cosh digamma div eq erf
    erf_inv erfc exp exp2 expm1 floor ge gt igamma igamma_grad_a igammac imag
    integer_pow is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter
    not or polygamma population_count pow real reduce_precision
    regularized_incomplete_beta rem round rsqrt select_n shift_left
    shift_right_arithmetic shift_right_logical sign sin sinh sqrt square stop_gradient
    sub tan tanh xor zeta""".split()
)
# Folds of planes. Sums and products of floats narrower than 32 bits are not
# folded: XLA may accumulate them in a wider type.
_REDUCTIONS: dict[str, Callable[[Array, Array], Array]] = {
    "reduce_sum": lax.add,
    "reduce_prod": lax.mul,
    "reduce_max": lax.max,
    "reduce_min": lax.min,
    "reduce_and": lax.bitwise_and,
    "reduce_or": lax.bitwise_or,
    "reduce_xor": lax.bitwise_xor,
}
_ROUNDING_REDUCTIONS = frozenset({"reduce_sum", "reduce_prod"})
_CHOOSERS = frozenset({"reduce_max", "reduce_min"})
# Calls inlined (evaluated equation by equation): `jit` is semantically the
# identity unless it carries shardings, layouts or compiler options.
_INLINED = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr"}
# Equations whose meaning lives in more than their jaxpr (custom derivative
# rules, rematerialisation policies): run under `vmap` over the positions.
_VMAPPED = frozenset({"custom_jvp_call", "custom_vjp_call", "remat2", "checkpoint"})
# Parameters of the rules below: anything else (a parameter a newer JAX adds)
# is not understood, so the equation is not reproduced.
_KNOWN_PARAMS: dict[str, frozenset[str]] = {
    **{name: frozenset({"axes", "out_sharding"}) for name in _REDUCTIONS},
    "broadcast_in_dim": frozenset({"shape", "broadcast_dimensions", "sharding"}),
    "reshape": frozenset({"new_sizes", "dimensions", "sharding"}),
    "transpose": frozenset({"permutation"}),
    "squeeze": frozenset({"dimensions"}),
    "rev": frozenset({"dimensions"}),
    "slice": frozenset({"start_indices", "limit_indices", "strides"}),
    "concatenate": frozenset({"dimension"}),
    "stack": frozenset({"axis"}),
    "split": frozenset({"sizes", "axis"}),
    "dot_general": frozenset(
        {"dimension_numbers", "precision", "preferred_element_type", "out_sharding"}
    ),
}


class _Unsupported(Exception):
    """A window-dependent value reaches an equation without an exact rule."""


def _is_planes(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == object


def _map(func: Callable[[Any], Any], planes: np.ndarray) -> np.ndarray:
    out = np.empty(planes.shape, dtype=object)
    for index in np.ndindex(*planes.shape):
        out[index] = func(planes[index])
    return out


def _bind(eqn: Any, values: Sequence[Any]) -> list:
    """`eqn`'s primitive on `values`, as `jax.core.eval_jaxpr` binds it."""
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*values, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


@ft.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _choose(op: Callable[[Array, Array], Array], *planes: Array) -> Array:
    """`reduce_max`/`reduce_min` of planes, with `reduce_max`'s derivative: the
    tangent is averaged over the tied maxima (a fold of pairwise `max` would
    split it unevenly)."""
    return ft.reduce(op, planes)


@_choose.defjvp
def _choose_jvp(
    op: Callable[[Array, Array], Array], planes: tuple, tangents: tuple
) -> tuple[Array, Array]:
    chosen = _choose(op, *planes)
    dtype = tangents[0].dtype
    hits = [lax.convert_element_type(lax.eq(p, chosen), dtype) for p in planes]
    total = ft.reduce(lax.add, map(lax.mul, tangents, hits))
    return chosen, lax.div(total, ft.reduce(lax.add, hits))


def _narrow_float(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize < 4


def _exact_accumulation(operand: Any, result: Any) -> bool:
    """Whether products and sums computed in `result` (from operands of dtype
    `operand`) are what `dot_general` computes: a widening within one kind,
    never a narrow float (XLA may accumulate those in a wider type)."""
    kinds = (jnp.integer, jnp.floating, jnp.complexfloating)
    same_kind = any(
        jnp.issubdtype(operand, kind) and jnp.issubdtype(result, kind) for kind in kinds
    )
    return (
        same_kind
        and jnp.promote_types(operand, result) == result
        and not _narrow_float(result)
    )


def _plain_precision(precision: Any) -> bool:
    """`None` or `lax.Precision` levels: products in the accumulation dtype are
    at least as accurate as each level (and equal to all of them on CPU). A dot
    algorithm (operand rounding, pass count) is not reproduced."""
    levels = precision if isinstance(precision, tuple) else (precision,)
    return all(level is None or isinstance(level, lax.Precision) for level in levels)


class _Interpreter:
    """Evaluates a jaxpr with window-dependent values as object arrays of
    planes; every element of such an array has shape `plane_shape`."""

    def __init__(self, plane_shape: tuple[int, ...]) -> None:
        self.plane_shape = plane_shape

    def _full(self, scalar: Array) -> Array:
        return lax.broadcast_in_dim(scalar, self.plane_shape, ())

    def _as_planes(self, value: Any, aval: Any) -> np.ndarray:
        """A window-independent value (of type `aval`) as planes."""
        if _is_planes(value):
            return value
        array = jnp.asarray(value, aval.dtype)
        if array.ndim == 0:  # a scalar: one broadcast
            out = np.empty((), dtype=object)
            out[()] = self._full(array)
            return out
        flat = array.reshape(-1)
        out = np.empty(array.size, dtype=object)
        for i in range(array.size):
            out[i] = self._full(lax.squeeze(lax.slice(flat, (i,), (i + 1,)), (0,)))
        return out.reshape(array.shape)

    def _stacked(self, planes: np.ndarray, aval: Any) -> Array:
        """Planes as one array of shape `plane_shape + planes.shape`."""
        if planes.ndim == 0:  # one plane (a tap, or a function of taps)
            return planes.item()
        if planes.size == 0:
            return jnp.zeros(self.plane_shape + planes.shape, aval.dtype)
        flat = jnp.stack(list(planes.reshape(-1)), axis=-1)
        return flat.reshape(self.plane_shape + planes.shape)

    def output(self, value: Any, aval: Any) -> Array:
        """An output (planes or a window-independent value) as one array of
        shape `plane_shape + S`."""
        if _is_planes(value):
            return self._stacked(value, aval)
        value = jnp.asarray(value)
        return jnp.broadcast_to(value, self.plane_shape + value.shape)

    def _split(self, array: Array) -> np.ndarray:
        """The inverse of `_stacked`."""
        out = np.empty(array.shape[len(self.plane_shape) :], dtype=object)
        for index in np.ndindex(*out.shape):
            out[index] = array[(Ellipsis, *index)]
        return out

    def _elementwise(self, eqn: Any, invals: list) -> list:
        # jaxprs broadcast scalars in elementwise ops: so do we.
        avals = [var.aval for var in eqn.invars]
        columns = np.broadcast_arrays(
            *(self._as_planes(value, aval) for value, aval in zip(invals, avals))
        )
        out = np.empty(columns[0].shape, dtype=object)
        for index in np.ndindex(*out.shape):
            (out[index],) = _bind(eqn, [column[index] for column in columns])
        return [out]

    def _vmapped(self, eqn: Any, invals: list) -> list:
        """`eqn` under `jax.vmap` over the positions (what the `vmap` lowering
        does with it), its window-dependent operands stacked."""
        size = math.prod(self.plane_shape)
        batched = [_is_planes(value) for value in invals]
        operands = [
            self._stacked(value, var.aval).reshape((size, *value.shape))
            if is_batched
            else value
            for value, var, is_batched in zip(invals, eqn.invars, batched)
        ]
        in_axes = tuple(0 if is_batched else None for is_batched in batched)
        outs = jax.vmap(lambda *values: _bind(eqn, values), in_axes=in_axes)(*operands)
        return [
            self._split(out.reshape(self.plane_shape + out.shape[1:])) for out in outs
        ]

    def _inlined(self, eqn: Any, invals: list) -> list:
        params = eqn.params
        if eqn.primitive.name in ("jit", "pjit") and (
            any(
                isinstance(sharding, jax.sharding.Sharding)
                for sharding in (*params["in_shardings"], *params["out_shardings"])
            )
            or any(
                layout is not None
                for layout in (*params["in_layouts"], *params["out_layouts"])
            )
            or params["compiler_options_kvs"]
        ):
            raise _Unsupported(eqn.primitive.name)
        closed = params[_INLINED[eqn.primitive.name]]
        inner = getattr(closed, "jaxpr", closed)
        return self.run(inner, getattr(closed, "consts", ()), invals)

    def _dot_general(self, eqn: Any, lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        params = eqn.params
        operand = eqn.invars[0].aval.dtype
        result = eqn.outvars[0].aval.dtype
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = params[
            "dimension_numbers"
        ]
        if (
            eqn.invars[1].aval.dtype != operand
            or not _exact_accumulation(operand, result)
            or not _plain_precision(params["precision"])
        ):
            raise _Unsupported("dot_general")

        def arrange(planes: np.ndarray, batch: Any, contract: Any) -> np.ndarray:
            """(batch, free, contracted), each flattened, in `result`."""
            free = [d for d in range(planes.ndim) if d not in (*batch, *contract)]
            moved = np.transpose(planes, (*batch, *free, *contract))
            sizes = [math.prod(planes.shape[d] for d in dims) for dims in (batch, free)]
            converted = _map(lambda p: lax.convert_element_type(p, result), moved)
            return converted.reshape((*sizes, -1))

        left = arrange(lhs, lhs_batch, lhs_contract)
        right = arrange(rhs, rhs_batch, rhs_contract)
        if left.shape[-1] == 0:
            raise _Unsupported("dot_general")  # an empty contraction
        out = np.empty(left.shape[:2] + right.shape[1:2], dtype=object)
        for b, i, j in np.ndindex(*out.shape):
            products = map(lax.mul, left[b, i], right[b, j])
            out[b, i, j] = ft.reduce(lax.add, products)
        free = [
            planes.shape[d]
            for planes, batch, contract in (
                (lhs, lhs_batch, lhs_contract),
                (rhs, rhs_batch, rhs_contract),
            )
            for d in range(planes.ndim)
            if d not in (*batch, *contract)
        ]
        return out.reshape((*(lhs.shape[d] for d in lhs_batch), *free))

    def _rule(self, eqn: Any, invals: list) -> list:
        name, params = eqn.primitive.name, eqn.params
        if name not in _KNOWN_PARAMS or set(params) - _KNOWN_PARAMS[name]:
            raise _Unsupported(name)
        (first, *rest) = [
            self._as_planes(value, var.aval) for value, var in zip(invals, eqn.invars)
        ]
        if name in _REDUCTIONS:
            axes = params["axes"]
            if (
                name in _ROUNDING_REDUCTIONS and _narrow_float(eqn.invars[0].aval.dtype)
            ) or not all(first.shape[axis] for axis in axes):
                raise _Unsupported(name)
            op = _REDUCTIONS[name]
            if name in _CHOOSERS and jnp.issubdtype(
                eqn.invars[0].aval.dtype, jnp.inexact
            ):
                fold = lambda planes: _choose(op, *planes)  # noqa: E731
            else:
                fold = ft.partial(ft.reduce, op)
            keep = [axis for axis in range(first.ndim) if axis not in axes]
            moved = np.transpose(first, keep + list(axes))
            moved = moved.reshape(moved.shape[: len(keep)] + (-1,))
            out = np.empty(moved.shape[:-1], dtype=object)
            for index in np.ndindex(*out.shape):
                out[index] = fold(moved[index])
            return [out]
        if name == "broadcast_in_dim":
            shape, dims = params["shape"], params["broadcast_dimensions"]
            expanded = [1] * len(shape)
            for axis, dim in enumerate(dims):
                expanded[dim] = first.shape[axis]
            return [np.broadcast_to(first.reshape(expanded), shape)]
        if name == "reshape":
            if params["dimensions"] is not None:
                raise _Unsupported(name)
            return [first.reshape(params["new_sizes"])]
        if name == "transpose":
            return [np.transpose(first, params["permutation"])]
        if name == "squeeze":
            return [np.squeeze(first, axis=tuple(params["dimensions"]))]
        if name == "rev":
            return [np.flip(first, axis=tuple(params["dimensions"]))]
        if name == "slice":
            strides = params["strides"] or (1,) * first.ndim
            bounds = zip(params["start_indices"], params["limit_indices"], strides)
            return [first[tuple(slice(*bound) for bound in bounds)]]
        if name == "concatenate":
            return [np.concatenate([first, *rest], axis=params["dimension"])]
        if name == "stack":
            return [np.stack([first, *rest], axis=params["axis"])]
        if name == "split":
            cuts = np.cumsum(params["sizes"])[:-1]
            return np.split(first, cuts, axis=params["axis"])
        (rhs,) = rest
        return [self._dot_general(eqn, first, rhs)]

    def _equation(self, eqn: Any, invals: list) -> list:
        """A window-dependent equation, reproduced exactly or `_Unsupported`."""
        name = eqn.primitive.name
        if any(eqn.params.get(key) is not None for key in ("sharding", "out_sharding")):
            raise _Unsupported(name)
        if name in _INLINED:
            return self._inlined(eqn, invals)
        if name in _VMAPPED:
            return self._vmapped(eqn, invals)
        if name in _ELEMENTWISE:
            return self._elementwise(eqn, invals)
        return self._rule(eqn, invals)

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
            if any(_is_planes(value) for value in invals):
                outvals = self._equation(eqn, invals)
            else:
                outvals = _bind(eqn, invals)
            for var, value in zip(eqn.outvars, outvals):
                env[var] = value
        return [read(var) for var in jaxpr.outvars]


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
    function has effects or an equation without an exact plane rule.
    """
    abstract = [jax.ShapeDtypeStruct(w.shape, d) for w, d in zip(windows, dtypes)]
    closed = jax.make_jaxpr(func)(*abstract, *dynamic)
    return interpret(closed, windows, dynamic)


def interpret(
    closed: jex.ClosedJaxpr, windows: Sequence[np.ndarray], dynamic: Sequence[Any]
) -> list[Array] | None:
    """Evaluate a function traced on windows, `closed(*windows, *dynamic)`, with
    the windows given as planes (see `unroll`).

    An element of a window that no equation reads may be `None`: a function
    traced on its whole window but reading only some taps (`_problem.record`)
    needs only their planes.

    **Arguments:**

    - `closed`: the function's jaxpr, traced with one array of shape
      `kernel_size` per window, then the dynamic arguments.
    - `windows`, `dynamic`: as for `unroll`.

    **Returns:**

    As `unroll`.
    """
    if closed.effects:
        return None
    planes = (plane for w in windows for plane in w.reshape(-1) if plane is not None)
    read = next(planes, None)
    if read is None:  # no plane gives the positions' shape
        return None
    interpreter = _Interpreter(jnp.shape(read))
    try:
        outs = interpreter.run(closed.jaxpr, closed.consts, [*windows, *dynamic])
    except _Unsupported:
        return None
    return [interpreter.output(out, aval) for out, aval in zip(outs, closed.out_avals)]
