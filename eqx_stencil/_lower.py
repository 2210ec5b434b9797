"""Lowering a map stencil to whole-array JAX operations: `lower`.

`lower(problem, table)` evaluates the table's functions box by box and
assembles the boxes (`_assemble.py`), except for one function everywhere:
linear in its windows, it may be one contraction or convolution of the whole
input (`_conv_lowering.py`); else, where the row lowering applies, its inner
rows read every tap as a flat slice of the input (`_by_rows`, `_rows.py`):

- the output grid is split into boxes of one owner each (`_regions.decompose`:
  the interior, whose windows lie inside the unpadded input, and thin boundary
  strips), or, when that takes too many boxes, one masked box per owner;
- `evaluate` computes a function on one box from the box's own piece of the
  virtually padded input (`Problem.sources`), so the padded array is never
  materialised;
- `evaluate_on` chooses the lowering. Each window tap is one strided slice of
  the box's source (a *plane*: the tap's value at every output position):

  - shift lowering (the function only indexes its window with integers: the
    table's recorded taps): the function's program, traced once when its
    taps were recorded, is evaluated on just those planes (else the function
    is `vmap`ped over output positions with them), so `x[1, 0] + x[-1, 0]`
    becomes plane + plane, exactly the hand-written program;
  - window lowering (the function uses the whole window): one contraction
    or convolution for linear functions of enough channels or taps
    (`_conv_lowering.py`), else the unrolled
    lowering (`_unroll.py`: the function's jaxpr evaluated plane by plane);
    if it has no rule for a primitive, `vmap` over the window stack built from
    the `prod(kernel_size)` planes.

`_scan.py` evaluates its steps' boxes with `evaluate_on` too.
"""

from __future__ import annotations

import functools as ft
import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax import lax
from jaxtyping import Array, PyTree

from ._assemble import check_outputs, select_masked, tile_together
from ._conv_lowering import conv_lowering
from ._geometry import DimLayout, out_shape
from ._problem import Problem, Table, Tap, TapProgram, Taps, tap_proxies
from ._regions import Box, decompose, owner_mask
from ._rows import row_planes, row_range
from ._unroll import unroll
from ._window import Window, unwrap_windows


# Above this many taps the unrolled lowering's program (one op per tap and
# operation) costs more to trace and compile than it saves; `vmap` instead.
MAX_UNROLLED_TAPS = 1024


def _volume(box: Box) -> int:
    return math.prod(stop - start for start, stop in box)


def lower(problem: Problem, table: Table) -> PyTree[Array]:
    """Apply a resolved region table to `problem`, region by region."""

    def evaluate_boxes(
        boxes: Sequence[Box],
        order: Sequence[int],
        masks: Sequence[np.ndarray | None],
    ) -> list[PyTree[Array]]:
        # The largest box last: its reads of the input are then the first
        # terms of the input's cotangent, and the strips' (`_boundary._read`)
        # are added into it in place.
        values: list[PyTree[Array]] = [None] * len(boxes)
        for i in sorted(range(len(boxes)), key=lambda i: _volume(boxes[i])):
            owner = order[i]
            values[i] = evaluate(
                problem,
                table.funcs[owner],
                boxes[i],
                table.taps[owner],
                table.programs[owner],
                masks[i],
            )
        check_outputs(values, boxes, [table.names[o] for o in order])
        return values

    if problem.fuse_tiles and len(table.funcs) == 1:
        # One function everywhere (not on a shard, whose padding is its
        # neighbours' halo: `HaloProblem.padded`): a linear whole-window
        # function may be one contraction or convolution of the whole input,
        # its padding folded in; else, where it applies, the row lowering.
        ((owner, func),) = table.funcs.items()
        taps = table.taps[owner]
        whole = None
        if taps is None:
            call, dynamic = _window_call(func, problem)
            boundary = (problem.boundary, problem.cval)
            whole = conv_lowering(
                call, problem.fields.arrays, problem.layouts, dynamic, boundary
            )
        if whole is None:
            program = table.programs[owner]
            whole = _by_rows(problem, func, taps, program, table.names[owner])
        if whole is not None:
            return whole
    tiled = decompose(table.plan)
    if tiled is not None:
        tiles, tiling = tiled
        boxes, order = zip(*tiles)
        shape = out_shape(problem.layouts)
        values = evaluate_boxes(boxes, order, [None] * len(boxes))
        # One function's interior and boundary strips: one loop (compile
        # time). A shard's tiles are written in place: its interior does not
        # wait for the halos.
        if not problem.fuse_tiles:
            assembly = "in_place"
        elif len(table.funcs) == 1 and len(boxes) <= 2 * len(shape) + 1:
            assembly = "sum"
        else:
            assembly = "concatenate"
        return tile_together(shape, tiling, boxes, values, assembly)
    owners = list(table.funcs)
    boxes, masks = zip(*(owner_mask(table.plan, owner) for owner in owners))
    values = evaluate_boxes(boxes, owners, masks)
    return select_masked(problem.layouts, boxes, masks, values)


def _by_rows(
    problem: Problem,
    func: Callable,
    taps: Taps | None,
    program: TapProgram | None,
    name: str,
) -> PyTree[Array] | None:
    """`func` on the whole grid by the row lowering (`_rows.py`): its rows,
    and the padded boxes above and below them, joined along dim 0; `None`
    where it does not apply. `taps`: the taps `func` reads, or `None` for a
    whole-window function (every tap read, the window lowerings); `program`:
    its program, if any (`Table`)."""
    reads = _every_tap(problem) if taps is None else taps
    rows = row_range(problem, reads)
    if rows is None:
        return None
    (a, b), shape = rows, out_shape(problem.layouts)
    later = tuple((0, n) for n in shape[1:])
    boxes = [((start, stop), *later) for start, stop in ((0, a), (b, shape[0]))]
    boxes = [box for box in boxes if _volume(box)]
    # The rows last: their reads of the input are then the first terms of
    # the input's cotangent, the bands' added into it in place (`lower`).
    planes = [
        _tap_planes(problem.sources(box), problem.layouts, box, reads, _no_guard)
        for box in boxes
    ]
    planes.append(row_planes(problem, reads, rows))
    boxes.append(((a, b), *later))
    if taps is None:
        evaluate_flat = _flat_windows(func, problem)
    else:
        evaluate_flat = ft.partial(
            _shift_lowering, func, problem=problem, taps=taps, program=None
        )

    def evaluate_part(part: list[Array], box: Box) -> PyTree[Array]:
        # The program runs on the planes as they are (the bands' are boxes,
        # the rows' flat); else each part is `vmap`ped once over its positions
        # flattened: the rows' planes are contiguous and the bands' small
        # (flattening a large strided plane would cost its gradient a copy).
        if taps is not None and program is not None:
            value = program.apply(taps, part, problem.args, problem.kwargs)
            if value is not None:
                return _reshaped(value, box, part[0].ndim)
        return _unflatten(evaluate_flat, part, box)

    values = [evaluate_part(part, box) for part, box in zip(planes, boxes)]
    check_outputs(values, boxes, [name] * len(boxes))
    order = sorted(range(len(boxes)), key=lambda i: boxes[i][0])
    parts = [values[i] for i in order]
    return jtu.tree_map(lambda *bands: jnp.concatenate(bands), *parts)


def _unflatten(
    evaluate_flat: Callable, planes: Sequence[Array], box: Box
) -> PyTree[Array]:
    """`evaluate_flat` on `box`'s planes flattened, its value reshaped back."""
    size = _volume(box)
    flat = [lax.reshape(plane, (size,)) for plane in planes]
    return _reshaped(evaluate_flat(flat, box=((0, size),)), box, 1)


def _reshaped(value: PyTree[Array], box: Box, ndim: int) -> PyTree[Array]:
    """`value`, whose leaves' first `ndim` dims run over `box`'s positions,
    with those dims reshaped to `box`'s shape."""
    shape = tuple(stop - start for start, stop in box)
    return jtu.tree_map(lambda y: lax.reshape(y, shape + jnp.shape(y)[ndim:]), value)


def _every_tap(problem: Problem) -> Taps:
    """Every tap of every field's window, field by field."""
    kernel = tuple(layout.kernel for layout in problem.layouts)
    fields = problem.fields.structure.num_leaves
    return tuple((f, tap) for f in range(fields) for tap in np.ndindex(*kernel))


def _flat_windows(func: Callable, problem: Problem) -> Callable:
    """A whole-window `func` at every position of a flat box, from the planes
    of `_every_tap` (the window lowerings, without the linear ones)."""
    call, dynamic = _window_call(func, problem)
    kernel = tuple(layout.kernel for layout in problem.layouts)

    def evaluate_flat(planes: Sequence[Array], box: Box) -> PyTree[Array]:
        per_field = np.empty((len(planes) // math.prod(kernel), *kernel), object)
        flat = per_field.reshape(-1)  # a view
        for i, plane in enumerate(planes):
            flat[i] = plane
        return _window_values(call, list(per_field), dynamic, box)

    return evaluate_flat


Guard = Callable[[Array], Array]


def _no_guard(plane: Array) -> Array:
    return plane


def mask_guard(mask: np.ndarray | None) -> Guard:
    """For a function evaluated on a box it owns only partly (`mask`): replace
    its inputs at the positions it does not own by those of one it owns, so
    it never sees (or differentiates at) a value outside its region."""
    if mask is None:
        return _no_guard
    owned = tuple(int(i) for i in np.argwhere(mask)[0])
    return lambda plane: jnp.where(mask, plane, plane[owned])


def evaluate(
    problem: Problem,
    func: Callable,
    box: Box,
    taps: Taps | None,
    program: TapProgram | None,
    mask: np.ndarray | None = None,
) -> PyTree[Array]:
    """`func` on every window whose output position lies in `box` (and in
    `mask`, if given: see `mask_guard`); `taps` and `program` as the table
    records them."""
    if mask is None:
        known = problem.precomputed(box, func)
        if known is not None:
            return known
    sources = problem.sources(box)
    return evaluate_on(problem, func, sources, box, taps, program, mask_guard(mask))


def evaluate_on(
    problem: Problem,
    func: Callable,
    sources: Sequence[Array],
    box: Box,
    taps: Taps | None,
    program: TapProgram | None,
    guard: Guard = _no_guard,
) -> PyTree[Array]:
    """`func` on the windows of `box`, read from `sources` (one per field):
    the padded input from padded coordinate `problem.source_range(box)`'s
    starts on."""
    if taps is None:
        return _window_lowering(func, sources, problem, box, guard)
    planes = _tap_planes(sources, problem.layouts, box, taps, guard)
    return _shift_lowering(func, planes, problem, box, taps, program)


def _shift_lowering(
    func: Callable,
    planes: Sequence[Array],
    problem: Problem,
    box: Box,
    taps: Taps,
    program: TapProgram | None,
) -> PyTree[Array]:
    """`func` at every position of `box`, tap `taps[i]` read from `planes[i]`:
    its program evaluated on the planes, else `func` `vmap`ped over them."""
    if program is not None:
        value = program.apply(taps, planes, problem.args, problem.kwargs)
        if value is not None:
            return value
    fields, index, args, kwargs = (
        problem.fields,
        problem.index,
        problem.args,
        problem.kwargs,
    )

    def per_position(*values: Array) -> PyTree:
        table = dict(zip(taps, values))
        return func(tap_proxies(fields, index, table.__getitem__), *args, **kwargs)

    return _map_positions(per_position, box, tuple(planes))


def _window_call(func: Callable, problem: Problem) -> tuple[Callable, Any]:
    """`func` as `call(windows, dynamic)` of one array per field and the
    call's array arguments, and those arguments."""
    index, structure = problem.index, problem.fields.structure
    dynamic, static = eqx.partition((problem.args, problem.kwargs), eqx.is_array)

    def call(arrays: Sequence[Array], dynamic: Any) -> PyTree:
        # Every window is a `Window`, so that every key goes through the
        # window's index rules (raw JAX indexing would clamp `w[5]`).
        args, kwargs = eqx.combine(dynamic, static)
        windows = [Window(a, index) for a in arrays]
        out = func(structure.unflatten(windows), *args, **kwargs)
        return unwrap_windows(out)

    return call, dynamic


def _window_lowering(
    func: Callable,
    sources: Sequence[Array],
    problem: Problem,
    box: Box,
    guard: Guard,
) -> PyTree[Array]:
    layouts = problem.layouts
    call, dynamic = _window_call(func, problem)
    if guard is _no_guard:  # linear functions: a contraction or convolution
        conv = conv_lowering(call, sources, layouts, dynamic)
        if conv is not None:
            return conv
    planes = [_field_planes(source, layouts, box, guard) for source in sources]
    return _window_values(call, planes, dynamic, box)


def _window_values(
    call: Callable, planes: Sequence[np.ndarray], dynamic: Any, box: Box
) -> PyTree[Array]:
    """`call` on every window of `box`, given every field's planes (object
    arrays of shape `kernel_size`): unrolled if it applies, else `vmap`ped
    over the window stacks."""
    unrolled = _unrolled(call, planes, dynamic)
    if unrolled is not None:
        return unrolled
    windows = tuple(_windows(field, box) for field in planes)
    return _map_positions(lambda *ws: call(ws, dynamic), box, windows)


def _unrolled(
    call: Callable, planes: Sequence[np.ndarray], dynamic: Any
) -> PyTree | None:
    """`call` by the unrolled lowering, if it applies."""
    if sum(field.size for field in planes) > MAX_UNROLLED_TAPS:
        return None
    leaves, treedef = jtu.tree_flatten(dynamic)
    out_tree: list = []

    def flat(*arrays: Array) -> list:
        windows, leaves = arrays[: len(planes)], arrays[len(planes) :]
        out = call(windows, jtu.tree_unflatten(treedef, leaves))
        out_leaves, out_def = jtu.tree_flatten(out)
        out_tree.append(out_def)
        return out_leaves

    dtypes = [field.reshape(-1)[0].dtype for field in planes]
    outs = unroll(flat, planes, dtypes, leaves)
    return None if outs is None else jtu.tree_unflatten(out_tree[0], outs)


def _map_positions(per_position: Callable, box: Box, inputs: tuple) -> PyTree:
    """`vmap` `per_position` over every output position of `box`."""
    mapped = per_position
    for start, stop in reversed(box):
        mapped = jax.vmap(mapped, axis_size=stop - start)
    return mapped(*inputs)


def _tap_slice(
    source: Array, layouts: Sequence[DimLayout], box: Box, tap: Sequence[int]
) -> Array:
    """Window tap `tap` for every output of `box`: one strided slice."""
    starts = [t * layout.dilation for t, layout in zip(tap, layouts)]
    limits = [
        start + (stop - begin - 1) * layout.stride + 1
        for start, (begin, stop), layout in zip(starts, box, layouts)
    ]
    strides = [layout.stride for layout in layouts]
    return lax.slice(source, starts, limits, strides)


def _tap_planes(
    sources: Sequence[Array],
    layouts: Sequence[DimLayout],
    box: Box,
    taps: Sequence[Tap],
    guard: Guard,
) -> list[Array]:
    return [guard(_tap_slice(sources[f], layouts, box, tap)) for f, tap in taps]


def _field_planes(
    source: Array, layouts: Sequence[DimLayout], box: Box, guard: Guard
) -> np.ndarray:
    """Every tap's plane of one field, as an object array of shape `kernel`."""
    kernel = tuple(layout.kernel for layout in layouts)
    planes = np.empty(kernel, dtype=object)
    # Last tap first: the gradient then sums the taps' transposes (one pad
    # each) first tap first. XLA:CPU's fusion emitter (jaxlib 0.10.2)
    # miscompiles the other order's fused pad chain (docs/known-issues.md).
    for tap in reversed(list(np.ndindex(*kernel))):
        planes[tap] = guard(_tap_slice(source, layouts, box, tap))
    return planes


def _windows(planes: np.ndarray, box: Box) -> Array:
    """The window stack of `box` from one field's planes: shape
    `box_shape + kernel_size`."""
    shape = tuple(stop - start for start, stop in box)
    return jnp.stack(list(planes.reshape(-1)), axis=-1).reshape(shape + planes.shape)
