"""Window functions linear in the window, lowered to one convolution.

`jnp.sum(w * W)`, `jnp.tensordot`, `jnp.einsum`, `@` with weights: when the
function's output is linear in its windows, it is `sum(weights * window)` for
weights that do not depend on the window. They are read at trace time by
transposing the function (`jax.linear_transpose`: the weights may be traced,
learnable arguments) and applied by `lax.conv_general_dilated`, strides and
dilation folded in. Dims the window covers whole (a `(C, 3, 3)` window over a
`(C, H, W)` image) become input channels, the fields too, and every output
entry an output channel.

**The rule.** A function is lowered here when all of these hold, else it
keeps the slice lowerings (`_unroll.py`, `vmap`):

- it has at least `MIN_CONV_TAPS` multiply-adds per output position (taps,
  i.e. fields times window size, times output entries): below that,
  XLA:CPU's convolution has a fixed cost that the unrolled slices beat
  (`benchmarks/conv.py`, `threshold_case`), above it the unrolled program
  grows (one product per tap and output entry: `es.nn.Conv2d(3, 64)`'s
  took two minutes to compile) and runs slower than the convolution;
  inside `always_conv()` (`es.nn.Conv`) any number does;
- its jaxpr is linear in the windows (`_is_linear`: no constant term, no
  custom derivative rule, no effect) and its dtypes are real floating point.

When one function covers every output (no regions), the whole input is ONE
convolution with the padding folded in: a zero fill is the convolution's
own padding (negative padding crops first), any other fill is padded once
(`padded_box`) before an unpadded convolution. With regions, each tile of
the function is a convolution of its source, which holds its padding.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax import lax
from jax.extend import core as jex_core
from jaxtyping import Array, PyTree

from ._boundary import fill_value, padded_box
from ._geometry import Cval, DimLayout
from ._identity import on_identity


# From this many taps times output entries on, a linear window function is
# computed by a convolution (measured on XLA:CPU: `benchmarks/conv.py`, see
# the rule above).
MIN_CONV_TAPS = 144
_ALWAYS = contextvars.ContextVar("eqx_stencil_always_conv", default=False)


@contextlib.contextmanager
def always_conv() -> Iterator[None]:
    """Within this context, stencils traced lower every linear window function
    to a convolution, however few its taps (`es.nn.Conv`).

    The slices win on a forward pass with few taps, but their gradient with
    respect to traced weights is one reduction per tap, output entry and tile:
    `es.nn.Conv2d(3, 4, 3)`'s weight gradient on an `(8, 3, 64, 64)` batch
    took 26.7 s to compile (and ran in 12.4 ms) against the convolution's
    0.51 s (7.8 ms) and `eqx.nn.Conv2d`'s 0.35 s (8.0 ms)."""
    token = _ALWAYS.set(True)
    try:
        yield
    finally:
        _ALWAYS.reset(token)


# Primitives linear in each of their operands that depend on the window
# (the others must not): `mul(window, weights)`, `dot_general`, ...
_LINEAR_IN_ONE = {"mul", "dot_general"}
# Primitives linear when their first operand depends on the window and the
# others do not (shapes, indices, a divisor).
_LINEAR_IN_FIRST = {
    "div",
    "neg",
    "reduce_sum",
    "transpose",
    "reshape",
    "broadcast_in_dim",
    "squeeze",
    "expand_dims",
    "slice",
    "rev",
    "copy",
    "copy_p",
    "cumsum",
    "dynamic_slice",
    "gather",
    "real",
    "imag",
    "conj",
    "split",
}
# Primitives linear when every operand depends on the window.
_LINEAR_IN_ALL = {"add", "sub", "add_any", "concatenate", "stack"}
_CALLS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
# Calls whose derivative rules the user chose: weights read by transposing
# their bodies would drop those rules, so the other lowerings handle them.
_CUSTOM_RULES = {"custom_jvp_call", "custom_vjp_call"}


def _is_linear(jaxpr: Any, linear: Sequence[bool]) -> list[bool] | None:
    """Which outputs of `jaxpr` depend (linearly) on the inputs flagged in
    `linear`, or `None` if some output is not a linear function of them (a
    constant output is not: the function would be affine)."""
    flags: dict[Any, bool] = dict(zip(jaxpr.invars, linear))

    def flag(var: Any) -> bool:
        return not isinstance(var, jex_core.Literal) and flags.get(var, False)

    for eqn in jaxpr.eqns:
        ins = [flag(v) for v in eqn.invars]
        name = eqn.primitive.name
        if eqn.effects or name in _CUSTOM_RULES:
            return None
        if not any(ins):
            out = False
        elif name in _LINEAR_IN_ONE:
            out = ins.count(True) == 1 or None
        elif name in _LINEAR_IN_FIRST:
            out = (ins[0] and not any(ins[1:])) or None
        elif name in _LINEAR_IN_ALL:
            out = all(ins) or None
        elif name == "convert_element_type":
            out = jnp.issubdtype(eqn.params["new_dtype"], jnp.inexact) or None
        elif name == "select_n":
            out = (not ins[0] and all(ins[1:])) or None
        else:
            sub = next((eqn.params[k] for k in _CALLS if k in eqn.params), None)
            inner = getattr(sub, "jaxpr", sub)
            found = None if inner is None else _is_linear(inner, ins)
            if found is None or len(found) != len(eqn.outvars):
                return None
            flags.update(zip(eqn.outvars, found))
            continue
        if out is None:
            return None
        for var in eqn.outvars:
            flags[var] = out
    outs = [flag(v) for v in jaxpr.outvars]
    return outs if all(outs) else None


def _weights(
    call: Callable, windows: Sequence[jax.ShapeDtypeStruct], dynamic: Any
) -> tuple[Array, list[tuple[tuple[int, ...], Any]], PyTree] | None:
    """The weights `(outputs, fields, *kernel)` of a linear `call`, each output
    leaf's shape and dtype, and the output structure; `None` if `call` is
    not linear in its windows or has fewer than `MIN_CONV_TAPS` taps times
    outputs (outside `always_conv()`)."""
    out_tree: list[Any] = []

    def flat(*arrays: Array) -> list[Array]:
        leaves, structure = jtu.tree_flatten(call(arrays, dynamic))
        out_tree.append(structure)
        return [jnp.asarray(leaf) for leaf in leaves]

    try:
        closed = jax.make_jaxpr(flat)(*windows)
    except Exception:  # the other lowerings report the function's own errors
        return None
    if _is_linear(closed.jaxpr, [True] * len(windows)) is None:
        return None
    leaves = [(tuple(a.shape), a.dtype) for a in closed.out_avals]
    if not all(jnp.issubdtype(d, jnp.floating) for _, d in leaves):
        return None
    sizes = [math.prod(shape) for shape, _ in leaves]
    taps = sum(math.prod(window.shape) for window in windows)
    if taps * sum(sizes) < MIN_CONV_TAPS and not _ALWAYS.get():
        return None
    transpose = jax.linear_transpose(flat, *windows)

    def row(unit: Array) -> Array:
        parts = jnp.split(unit, np.cumsum(sizes)[:-1])
        cotangents = [
            p.reshape(shape).astype(dtype) for p, (shape, dtype) in zip(parts, leaves)
        ]
        return jnp.stack(transpose(cotangents))

    # The transpose on every unit vector (`_identity.py`: no product with the
    # identity is computed).
    dtype = jnp.result_type(*[d for _, d in leaves])
    return on_identity(jax.vmap(row), sum(sizes), dtype), leaves, out_tree[0]


Boundary = tuple[str, Cval]


def _sources_and_pads(
    arrays: Sequence[Array], layouts: Sequence[DimLayout], boundary: Boundary | None
) -> tuple[list[Array], list[tuple[int, int]]]:
    """The convolution's inputs and the zero padding it adds itself.

    A tile's sources already hold their padding (`boundary` is `None`). The
    whole input with a zero fill has it folded into the convolution (negative
    padding crops first); any other fill is padded once (`padded_box`)."""
    if boundary is None:
        return list(arrays), [(0, 0)] * len(layouts)
    mode, cval = boundary
    fill = fill_value(cval if mode == "constant" else 0, arrays[0].dtype)
    if mode == "constant" and not np.any(fill):
        starts = [max(0, -layout.lo) for layout in layouts]
        limits = [layout.size - max(0, -layout.hi) for layout in layouts]
        cropped = [lax.slice(x, starts, limits) for x in arrays]
        return cropped, [(max(0, layout.lo), max(0, layout.hi)) for layout in layouts]
    box = [(0, layout.size + layout.lo + layout.hi) for layout in layouts]
    padded = [padded_box(x, layouts, box, mode, cval) for x in arrays]
    return padded, [(0, 0)] * len(layouts)


def conv_lowering(
    call: Callable,
    arrays: Sequence[Array],
    layouts: Sequence[DimLayout],
    dynamic: Any,
    boundary: Boundary | None = None,
) -> PyTree[Array] | None:
    """`call` on every window as one convolution of `arrays` (one per field),
    or `None` when it has too few taps times outputs, is not linear in its
    windows, or its dtypes are not real floating point.

    With `boundary=None`, `arrays` are a tile's sources: the padded input from
    the tile's first window on, exactly as far as its last window reads. With
    a `(mode, cval)` boundary they are the whole unpadded input, padded by the
    layouts' `lo`/`hi` in that mode, and every output is computed."""
    kernel = tuple(layout.kernel for layout in layouts)
    if not all(jnp.issubdtype(x.dtype, jnp.floating) for x in arrays):
        return None
    if any(layout.out == 0 for layout in layouts):
        return None
    windows = [jax.ShapeDtypeStruct(kernel, x.dtype) for x in arrays]
    found = _weights(call, windows, dynamic)
    if found is None:
        return None
    weights, leaves, structure = found
    sources, pads = _sources_and_pads(arrays, layouts, boundary)
    # A dim the window covers whole, unpadded and undilated, is a channel dim
    # (all but the last, when every dim is).
    channel = [
        pad == (0, 0) and layout.dilation == 1 and n == layout.kernel
        for pad, layout, n in zip(pads, layouts, sources[0].shape)
    ]
    channel[-1] = channel[-1] and not all(channel)
    spatial = [d for d, c in enumerate(channel) if not c]
    channels = [d for d, c in enumerate(channel) if c]
    # Accumulate in the widest of the inputs' and outputs' dtypes, as a
    # `preferred_element_type` in the function would.
    dtype = jnp.result_type(*sources, *(d for _, d in leaves))
    lhs = jnp.stack([x.astype(dtype) for x in sources])  # (fields, *source)
    order = [0] + [1 + d for d in channels] + [1 + d for d in spatial]
    lhs = jnp.transpose(lhs, order)
    lhs = lhs.reshape((1, -1) + lhs.shape[1 + len(channels) :])
    rhs = jnp.transpose(weights.astype(dtype), [0] + [1 + o for o in order])
    rhs = rhs.reshape(rhs.shape[:1] + (-1,) + rhs.shape[2 + len(channels) :])
    padding = [pads[d] for d in spatial]
    last = spatial[-1]
    # XLA:CPU runs a convolution without padding on a path up to 7x slower
    # with many channels (jax 0.10); a column of padding, its output dropped,
    # avoids it.
    if padding[-1] == (0, 0):
        padding[-1] = (0, 1)
    out = lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides=[layouts[d].stride for d in spatial],
        padding=padding,
        rhs_dilation=[layouts[d].dilation for d in spatial],
    )[0]
    lengths = tuple(
        1 if c else (n + lo + hi - layout.span) // layout.stride + 1
        for c, layout, n, (lo, hi) in zip(channel, layouts, sources[0].shape, pads)
    )
    out = lax.slice_in_dim(out, 0, lengths[last], axis=-1)
    out = jnp.moveaxis(out, 0, -1).reshape(lengths + (-1,))
    sizes = [math.prod(shape) for shape, _ in leaves]
    parts = jnp.split(out, np.cumsum(sizes)[:-1], axis=-1)
    values = [
        p.reshape(lengths + shape).astype(d) for p, (shape, d) in zip(parts, leaves)
    ]
    return jtu.tree_unflatten(structure, values)
