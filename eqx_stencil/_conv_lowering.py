"""Window functions linear in the window, lowered to one contraction.

`jnp.sum(w * W)`, `jnp.tensordot`, `jnp.einsum`, `@` with weights: when the
function's output is linear in its windows, it is `sum(weights * window)` for
weights that do not depend on the window. They are read at trace time by
transposing the function (`jax.linear_transpose`: the weights may be traced,
learnable arguments). Dims the window covers whole (a `(C, 3, 3)` window over
a `(C, H, W)` image) become channels, the fields too, and every output entry
an output channel. The weights are then applied in one of two forms, strides
and dilation folded in:

- the **contraction** (`_contract_then_shift`): one matrix product contracts
  the channels for every output and kernel tap, and each output is the sum
  of its taps' planes, shifted (one fused loop);
- the **convolution** (`_convolve`): one `lax.conv_general_dilated`.

**The rule** (measured on XLA:CPU, `benchmarks/conv.py`). A function is
lowered here when its jaxpr is linear in the windows (`_is_linear`: no
constant term, no custom derivative rule, no effect), its dtypes are real
floating point, and one of these holds; else it keeps the slice lowerings
(`_unroll.py`, `vmap`):

- **contraction** when it has at least `MIN_CONTRACTED` channels and at
  most `FEW_OUTPUTS` output entries, or fewer than `VECTOR_OUTPUTS` whose
  planes (the product's `outputs × kernel taps × pixels`) take at most
  `MAX_PLANES_BYTES`, on the backends in `CONTRACT_FIRST_BACKENDS`
  (measured on the CPU only; other backends keep their vendor's
  convolution), outside `no_contraction()` (`es.nn.Conv`). XLA:CPU's
  convolution computes 8 output channels at once (its vector width): into
  one output it runs at about 4 GFLOP/s, and the contraction takes 0.21× its
  time at 16 channels (its gradient 0.41×), 0.22–0.28× at 64; into 2–4
  outputs 0.2–0.6× at 4–64 channels from 256² to 1024² (at 2048², 4 into 4:
  1.0×). Into 5–7 outputs the contraction wins while its planes stay in
  `MAX_PLANES_BYTES` (16 channels into 7 at 256², 16 MiB: 0.5×; at 724²,
  126 MiB: 0.6–0.7×; into 5 at 1024², 180 MiB: 0.77×) and loses past it
  (into 6 at 1024², 216 MiB: 1.0× at 16 channels, 1.15× at 8; into 7,
  252 MiB: 1.5×). From 8 outputs the convolution's vectors are full: it is
  faster (16 into 8: 0.5–0.7× the contraction's time; 64 into 20: 0.3×),
  except at 20–64 channels into 9–12 outputs at 256², where the contraction
  measured 1.5–3× faster and the rule still picks the convolution (the
  convolution wins at 8–16 channels there, and at 1024²). At 3 channels
  the slices stay: the contraction's forward is 1.5× faster, but the
  slices' value and gradients take 0.86× its time;
- **convolution** with at least `MIN_CONV_TAPS` multiply-adds per output
  position (taps, i.e. fields times window size, times output entries), or
  any number inside `always_conv()` (`es.nn.Conv`): past it the unrolled
  slices compile slowly (one product per tap and output entry: 3.6 s
  against 0.14 s for one field into 16 outputs of a 3×3 window;
  `es.nn.Conv2d(3, 64)`'s took two minutes), while their run time is about
  the convolution's (0.33× to 1.4× of it, by the shape).

When one function covers every output (no regions), the whole input is ONE
contraction with the padding folded in: a zero fill is the contraction's
own padding (negative padding crops first), any other fill is padded once
(`padded_box`) before an unpadded one. With regions, each tile of the
function is a contraction of its source, which holds its padding.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

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
# With at least `MIN_CONTRACTED` contracted channels, the channels are
# contracted first (`_contract_then_shift`) into at most `FEW_OUTPUTS`
# output entries, or into fewer than `VECTOR_OUTPUTS` whose planes take at
# most `MAX_PLANES_BYTES`, on the backends where that was measured faster
# than the convolution and the slices (`benchmarks/conv.py`).
MIN_CONTRACTED = 4
FEW_OUTPUTS = 4
VECTOR_OUTPUTS = 8
MAX_PLANES_BYTES = 192 * 2**20
CONTRACT_FIRST_BACKENDS = frozenset({"cpu"})
_ALWAYS = contextvars.ContextVar("eqx_stencil_always_conv", default=False)
_NO_CONTRACTION = contextvars.ContextVar("eqx_stencil_no_contraction", default=False)
LOWERINGS = ("slices", "convolution", "contraction")
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "eqx_stencil_forced_lowering", default=None
)


def lowering_for(taps: int, outputs: int, contracted: int, plane_bytes: int) -> str:
    """The rule: which of `LOWERINGS` computes a linear function of `taps`
    taps (fields times window size) into `outputs` entries, `contracted` of
    the taps being channels, whose contraction would make `plane_bytes` of
    planes (one per kernel tap) per output entry."""
    forced = _FORCED.get()
    if forced is not None:
        return forced
    few_outputs = outputs <= FEW_OUTPUTS or (
        outputs < VECTOR_OUTPUTS and outputs * plane_bytes <= MAX_PLANES_BYTES
    )
    if (
        not _NO_CONTRACTION.get()
        and contracted >= MIN_CONTRACTED
        and few_outputs
        and jax.default_backend() in CONTRACT_FIRST_BACKENDS
    ):
        return "contraction"
    if _ALWAYS.get() or taps * outputs >= MIN_CONV_TAPS:
        return "convolution"
    return "slices"


@contextlib.contextmanager
def _setting(var: contextvars.ContextVar[Any], value: Any) -> Iterator[None]:
    """`var` set to `value` within this context."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


@contextlib.contextmanager
def forced_lowering(lowering: str) -> Iterator[None]:
    """Within this context, linear window functions traced take `lowering`
    (one of `LOWERINGS`) whatever the rule says; for benchmarks and tests.
    "slices" leaves them to the slice lowerings (`_unroll.py`, `vmap`)."""
    if lowering not in LOWERINGS:
        raise ValueError(f"lowering={lowering!r}; expected one of {LOWERINGS}")
    with _setting(_FORCED, lowering):
        yield


@contextlib.contextmanager
def no_contraction() -> Iterator[None]:
    """Within this context, stencils traced never contract the channels first
    (`_contract_then_shift`); `es.nn.Conv`.

    Layers are trained: under a batch `vmap` the contraction's gradient took
    1.68× `eqx.nn.Conv2d`'s (64 into 16 channels, a batch of 8 of 64², 3×3;
    its forward pass 0.61×), so they keep `eqx.nn`'s convolution."""
    with _setting(_NO_CONTRACTION, True):
        yield


@contextlib.contextmanager
def always_conv() -> Iterator[None]:
    """Within this context, stencils traced lower every linear window function
    to a convolution, however few its taps (`es.nn.Conv`).

    The slices win on a forward pass with few taps, but their gradient with
    respect to traced weights is one reduction per tap, output entry and tile:
    `es.nn.Conv2d(3, 4, 3)`'s weight gradient on an `(8, 3, 64, 64)` batch
    took 26.7 s to compile (and ran in 12.4 ms) against the convolution's
    0.51 s (7.8 ms) and `eqx.nn.Conv2d`'s 0.35 s (8.0 ms)."""
    with _setting(_ALWAYS, True):
        yield


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
    call: Callable,
    windows: Sequence[jax.ShapeDtypeStruct],
    dynamic: Any,
    contracted: int,
    plane_bytes: int,
) -> tuple[Array, list[tuple[tuple[int, ...], Any]], PyTree, str] | None:
    """The weights `(outputs, fields, *kernel)` of a linear `call`, each output
    leaf's shape and dtype, the output structure and the lowering the rule
    picks for `contracted` channels and `plane_bytes` of planes per output
    entry (`lowering_for`); `None` if `call` is not linear in its windows or
    the rule picks the slices."""
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
    lowering = lowering_for(taps, sum(sizes), contracted, plane_bytes)
    if lowering == "slices":
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
    weights = on_identity(jax.vmap(row), sum(sizes), dtype)
    return weights, leaves, out_tree[0], lowering


Boundary = tuple[str, Cval]


def _zero_fill(boundary: Boundary | None, dtype: Any) -> bool:
    """Whether `boundary` pads with zeros (which the convolution adds itself)."""
    if boundary is None:
        return False
    mode, cval = boundary
    return mode == "constant" and not np.any(fill_value(cval, dtype))


def _sources(
    arrays: Sequence[Array], layouts: Sequence[DimLayout], boundary: Boundary | None
) -> list[Array]:
    """The arrays the convolution reads (`_own_padding` says what it adds).

    A tile's sources already hold their padding (`boundary` is `None`). The
    whole input with a zero fill has it folded into the convolution (negative
    padding crops first); any other fill is padded once (`padded_box`)."""
    if boundary is None:
        return list(arrays)
    if _zero_fill(boundary, arrays[0].dtype):
        starts = [max(0, -layout.lo) for layout in layouts]
        limits = [layout.size - max(0, -layout.hi) for layout in layouts]
        return [lax.slice(x, starts, limits) for x in arrays]
    box = [(0, layout.padded_size) for layout in layouts]
    return [padded_box(x, layouts, box, *boundary) for x in arrays]


def _own_padding(
    shape: Sequence[int],
    layouts: Sequence[DimLayout],
    boundary: Boundary | None,
    dtype: Any,
) -> tuple[list[int], list[tuple[int, int]]]:
    """The shape of `_sources` of arrays of `shape`, and the zero padding
    the convolution adds to them itself."""
    if boundary is None:
        return list(shape), [(0, 0)] * len(layouts)
    if _zero_fill(boundary, dtype):
        pads = [(max(0, layout.lo), max(0, layout.hi)) for layout in layouts]
    else:
        pads = [(0, 0)] * len(layouts)
    extents = [layout.padded_size - lo - hi for layout, (lo, hi) in zip(layouts, pads)]
    return extents, pads


class _Geometry(NamedTuple):
    """The spatial dims of a contraction: the zero padding it adds, strides,
    dilation and output lengths."""

    padding: tuple[tuple[int, int], ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    lengths: tuple[int, ...]


def _convolve(lhs: Array, rhs: Array, geometry: _Geometry) -> Array:
    """`(O, *lengths)`: `rhs` `(O, C, *kernel)` correlated with `lhs`
    `(C, *spatial)` by one `lax.conv_general_dilated`."""
    padding = list(geometry.padding)
    # XLA:CPU runs a convolution without padding on a path up to 7x slower
    # with many channels (jax 0.10); a column of padding, its output dropped,
    # avoids it.
    if padding[-1] == (0, 0):
        padding[-1] = (0, 1)
    out = lax.conv_general_dilated(
        lhs[None],
        rhs,
        window_strides=geometry.strides,
        padding=padding,
        rhs_dilation=geometry.dilation,
    )[0]
    return lax.slice_in_dim(out, 0, geometry.lengths[-1], axis=-1)


def _contract_then_shift(lhs: Array, rhs: Array, geometry: _Geometry) -> Array:
    """`_convolve` as one matrix product and a sum of shifted slices.

    The product contracts the channels for every output and kernel tap at
    once, `(O * taps, C) @ (C, pixels)`; output `o` is then the sum over taps
    of plane `(o, tap)` shifted by the tap's offset, zero where the shift
    leaves the plane (one fused loop)."""
    outputs, channels, *kernel = rhs.shape
    spatial = lhs.shape[1:]
    taps = math.prod(kernel)
    matrix = jnp.moveaxis(rhs.reshape(outputs, channels, taps), 1, -1)
    planes = matrix.reshape(outputs * taps, channels) @ lhs.reshape(channels, -1)
    planes = planes.reshape(outputs, taps, *spatial)
    zero = jnp.zeros((), lhs.dtype)
    total = jnp.zeros((outputs, *geometry.lengths), lhs.dtype)
    dims = list(
        zip(
            spatial,
            geometry.padding,
            geometry.strides,
            geometry.dilation,
            geometry.lengths,
        )
    )
    for tap, offsets in enumerate(np.ndindex(*kernel)):
        # Output q reads plane index q * stride + offset: inside the plane for
        # q in [first, last], in the padding elsewhere.
        reads = []
        for k, (n, (lo, _), stride, dilation, length) in zip(offsets, dims):
            offset = k * dilation - lo
            first = -(-max(0, -offset) // stride)
            last = min(length - 1, (n - 1 - offset) // stride)
            reads.append((first, last, first * stride + offset))
        if any(last < first for first, last, _ in reads):
            continue  # the tap reads only padding
        shifted = lax.slice(
            planes[:, tap],
            [0] + [start for _, _, start in reads],
            [outputs]
            + [
                start + (last - first) * s + 1
                for (first, last, start), s in zip(reads, geometry.strides)
            ],
            [1, *geometry.strides],
        )
        padding = [(0, 0, 0)] + [
            (first, length - 1 - last, 0)
            for (first, last, _), length in zip(reads, geometry.lengths)
        ]
        total = total + lax.pad(shifted, zero, padding)
    return total


def conv_lowering(
    call: Callable,
    arrays: Sequence[Array],
    layouts: Sequence[DimLayout],
    dynamic: Any,
    boundary: Boundary | None = None,
) -> PyTree[Array] | None:
    """`call` on every window as one contraction of `arrays` (one per field)
    with its weights, or `None` when the slices are cheaper, `call` is not
    linear in its windows, or its dtypes are not real floating point.

    With `boundary=None`, `arrays` are a tile's sources: the padded input from
    the tile's first window on, exactly as far as its last window reads. With
    a `(mode, cval)` boundary they are the whole unpadded input, padded by the
    layouts' `lo`/`hi` in that mode, and every output is computed."""
    kernel = tuple(layout.kernel for layout in layouts)
    if not all(jnp.issubdtype(x.dtype, jnp.floating) for x in arrays):
        return None
    if any(layout.out == 0 for layout in layouts):
        return None
    extents, pads = _own_padding(arrays[0].shape, layouts, boundary, arrays[0].dtype)
    # A dim the window covers whole, unpadded and undilated, is a channel dim
    # (all but the last, when every dim is).
    channel = [
        pad == (0, 0) and layout.dilation == 1 and n == layout.kernel
        for pad, layout, n in zip(pads, layouts, extents)
    ]
    channel[-1] = channel[-1] and not all(channel)
    spatial = [d for d, c in enumerate(channel) if not c]
    channels = [d for d, c in enumerate(channel) if c]
    contracted = len(arrays) * math.prod(extents[d] for d in channels)
    # The rule counts the dims the window covers in the whole input, not in
    # a tile (a boundary strip's source may be one window wide); the others
    # make the planes of a contraction of the whole input.
    whole = [n.padded_size == n.kernel == n.span for n in layouts]
    rule_channels = len(arrays) * math.prod(
        n.kernel for n, w in zip(layouts, whole) if w
    )
    plane_bytes = arrays[0].dtype.itemsize * math.prod(
        n.kernel * n.padded_size for n, w in zip(layouts, whole) if not w
    )
    windows = [jax.ShapeDtypeStruct(kernel, x.dtype) for x in arrays]
    found = _weights(call, windows, dynamic, rule_channels, plane_bytes)
    if found is None:
        return None
    weights, leaves, structure, lowering = found
    sources = _sources(arrays, layouts, boundary)
    # Accumulate in the widest of the inputs' and outputs' dtypes, as a
    # `preferred_element_type` in the function would.
    dtype = jnp.result_type(*sources, *(d for _, d in leaves))
    lhs = jnp.stack([x.astype(dtype) for x in sources])  # (fields, *source)
    order = [0] + [1 + d for d in channels] + [1 + d for d in spatial]
    lhs = jnp.transpose(lhs, order).reshape(
        (contracted,) + tuple(extents[d] for d in spatial)
    )
    rhs = jnp.transpose(weights.astype(dtype), [0] + [1 + o for o in order])
    rhs = rhs.reshape(rhs.shape[:1] + (contracted,) + rhs.shape[2 + len(channels) :])
    geometry = _Geometry(
        padding=tuple(pads[d] for d in spatial),
        strides=tuple(layouts[d].stride for d in spatial),
        dilation=tuple(layouts[d].dilation for d in spatial),
        lengths=tuple(
            (extents[d] + lo + hi - layouts[d].span) // layouts[d].stride + 1
            for d, (lo, hi) in zip(spatial, (pads[d] for d in spatial))
        ),
    )
    if lowering == "contraction":
        out = _contract_then_shift(lhs, rhs, geometry)
    else:
        out = _convolve(lhs, rhs, geometry)
    spatial_lengths = iter(geometry.lengths)
    lengths = tuple(1 if c else next(spatial_lengths) for c in channel)
    out = jnp.moveaxis(out, 0, -1).reshape(lengths + (-1,))
    sizes = [math.prod(shape) for shape, _ in leaves]
    parts = jnp.split(out, np.cumsum(sizes)[:-1], axis=-1)
    values = [
        p.reshape(lengths + shape).astype(d) for p, (shape, d) in zip(parts, leaves)
    ]
    return jtu.tree_unflatten(structure, values)
