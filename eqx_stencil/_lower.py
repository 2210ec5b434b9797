"""Lowering a stencil function to whole-array JAX operations.

The output grid is split into boxes (`_regions.decompose`): the interior, whose windows
lie inside the unpadded input, and thin boundary strips. Each box is computed
from its own piece of the virtually padded input (`padded_box`), so the padded
array is never materialised, and the boxes are assembled in place.

On a box, each window tap is one strided slice of the box's source (a
*plane*: the tap's value at every output position). The function is applied:

- shift lowering: a recording pass (`record_taps`, an abstract trace with a
  `TapProxy`) finds the taps the function reads, and the function is `vmap`ped
  over output positions with just those planes, so `x[1, 0] + x[-1, 0]`
  becomes plane + plane, exactly the hand-written program.
- window lowering (the function uses the whole window): first the unrolled
  lowering (`_unroll.py`: the function's jaxpr evaluated plane by plane); if it
  has no rule for a primitive, `vmap` over the window stack built from the
  `prod(kernel_size)` planes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, PyTree, PyTreeDef

from ._assemble import select_masked, tile_together
from ._boundary import padded_box
from ._conv_lowering import conv_lowering
from ._geometry import Cval, DimLayout, out_shape
from ._indexing import WindowIndex
from ._regions import (
    Box,
    Plan,
    Region,
    decompose,
    describe,
    owner_mask,
    plan,
)
from ._unroll import unroll
from ._window import NeedsWindow, TapProxy, Window, unwrap_windows


# Above this many taps the unrolled lowering's program (one op per tap and
# operation) costs more to trace and compile than it saves; `vmap` instead.
MAX_UNROLLED_TAPS = 1024

# A tap read by a function: (field, window index), `field` numbering the leaves
# of the stencil's input (0 for a plain array).
Tap = tuple[int, tuple[int, ...]]
Taps = tuple[Tap, ...]


def _proxies(
    fields: Fields, index: WindowIndex, lookup: Callable[[Tap], Any]
) -> PyTree:
    """One `TapProxy` per field, in the fields' structure."""
    proxies = [
        TapProxy(index, lambda tap, f=f: lookup((f, tap)))
        for f in range(fields.structure.num_leaves)
    ]
    return fields.structure.unflatten(proxies)


def record_taps(
    func: Callable, index: WindowIndex, fields: Fields, args: tuple, kwargs: dict
) -> Taps | None:
    """The taps `func` reads, or `None` when it uses its window as a whole."""
    seen: dict[Tap, None] = {}

    def lookup(tap: Tap) -> Array:
        seen[tap] = None
        return jnp.zeros((), fields.arrays[tap[0]].dtype)

    def run(args: tuple, kwargs: dict) -> Any:
        out = func(_proxies(fields, index, lookup), *args, **kwargs)
        if any(isinstance(leaf, TapProxy) for leaf in jtu.tree_leaves(out)):
            raise NeedsWindow  # returns the window itself (patches)
        return out

    try:
        eqx.filter_eval_shape(run, args, kwargs)
    except (NeedsWindow, TypeError, ValueError, AttributeError):
        # Whole-window use (`jnp.sum(x)` fails in JAX before our signal can be
        # raised). The window lowering runs the function on real windows, so a
        # genuine error in the function surfaces there.
        return None
    return tuple(seen)


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


def _planes(
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
    for tap in np.ndindex(*kernel):
        planes[tap] = guard(_tap_slice(source, layouts, box, tap))
    return planes


def _windows(
    source: Array, layouts: Sequence[DimLayout], box: Box, guard: Guard
) -> Array:
    """The window stack of `box`: shape `box_shape + kernel_size`."""
    planes = _field_planes(source, layouts, box, guard)
    shape = tuple(stop - start for start, stop in box)
    return jnp.stack(list(planes.reshape(-1)), axis=-1).reshape(shape + planes.shape)


def _unrolled(
    call: Callable,
    sources: Sequence[Array],
    layouts: Sequence[DimLayout],
    box: Box,
    dynamic: Any,
    guard: Guard,
) -> PyTree | None:
    """`call` on every window of `box` by the unrolled lowering, if it applies."""
    kernel = tuple(layout.kernel for layout in layouts)
    if len(sources) * math.prod(kernel) > MAX_UNROLLED_TAPS:
        return None
    planes = [_field_planes(source, layouts, box, guard) for source in sources]
    leaves, treedef = jtu.tree_flatten(dynamic)
    out_tree: list = []

    def flat(*arrays: Array) -> list:
        windows, leaves = arrays[: len(planes)], arrays[len(planes) :]
        out = call(windows, jtu.tree_unflatten(treedef, leaves))
        out_leaves, out_def = jtu.tree_flatten(out)
        out_tree.append(out_def)
        return out_leaves

    outs = unroll(flat, planes, [source.dtype for source in sources], leaves)
    return None if outs is None else jtu.tree_unflatten(out_tree[0], outs)


def _map_positions(per_position: Callable, box: Box, inputs: tuple) -> PyTree:
    """`vmap` `per_position` over every output position of `box`."""
    mapped = per_position
    for start, stop in reversed(box):
        mapped = jax.vmap(mapped, axis_size=stop - start)
    return mapped(*inputs)


def _shift_lowering(
    func: Callable,
    sources: Sequence[Array],
    problem: Problem,
    box: Box,
    taps: Taps,
    guard: Guard,
) -> PyTree[Array]:
    fields, index, args, kwargs = (
        problem.fields,
        problem.index,
        problem.args,
        problem.kwargs,
    )

    def per_position(*values: Array) -> PyTree:
        table = dict(zip(taps, values))
        return func(_proxies(fields, index, table.__getitem__), *args, **kwargs)

    planes = _planes(sources, problem.layouts, box, taps, guard)
    return _map_positions(per_position, box, tuple(planes))


def _window_lowering(
    func: Callable,
    sources: Sequence[Array],
    problem: Problem,
    box: Box,
    guard: Guard,
) -> PyTree[Array]:
    index, layouts, structure = problem.index, problem.layouts, problem.fields.structure
    dynamic, static = eqx.partition((problem.args, problem.kwargs), eqx.is_array)

    def call(arrays: Sequence[Array], dynamic: Any) -> PyTree:
        # Every window is a `Window`, so that every key goes through the
        # window's index rules (raw JAX indexing would clamp `w[5]`).
        args, kwargs = eqx.combine(dynamic, static)
        windows = [Window(a, index) for a in arrays]
        out = func(structure.unflatten(windows), *args, **kwargs)
        return unwrap_windows(out)

    if guard is _no_guard:  # linear functions of many taps: a convolution
        conv = conv_lowering(call, sources, layouts, box, dynamic)
        if conv is not None:
            return conv
    unrolled = _unrolled(call, sources, layouts, box, dynamic, guard)
    if unrolled is not None:
        return unrolled
    windows = tuple(_windows(source, layouts, box, guard) for source in sources)
    return _map_positions(lambda *ws: call(ws, dynamic), box, windows)


@dataclasses.dataclass(frozen=True)
class Fields:
    """The stencil's input: the leaves of a pytree of same-shape arrays (one
    leaf, structure `*`, for a plain array)."""

    arrays: tuple[Array, ...]
    structure: PyTreeDef  # pyright: ignore[reportInvalidTypeForm]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.arrays[0].shape


def as_fields(tree: PyTree[ArrayLike], name: str = "array") -> Fields:
    """Validate the input: a non-empty pytree of arrays of one shape."""
    leaves, structure = jtu.tree_flatten(tree)
    if not leaves:
        raise ValueError(
            f"{name} must be an array or a pytree of same-shape arrays; got "
            f"{tree!r}, which holds no array."
        )
    for path, leaf in jtu.tree_flatten_with_path(tree)[0]:
        if not isinstance(leaf, (jax.Array, np.ndarray)) and not hasattr(
            leaf, "__jax_array__"
        ):
            raise TypeError(
                f"{name} must be an array or a pytree (tuple, list, dict, Module) of "
                f"same-shape arrays, its fields; got {type(tree).__name__} whose "
                f"leaf {jtu.keystr(path) or 'root'} is {leaf!r} of type "
                f"{type(leaf).__name__}, not an array. A list of numbers is a "
                "pytree of scalar fields: for one array pass jnp.asarray(...)."
            )
    arrays = tuple(jnp.asarray(leaf) for leaf in leaves)
    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
        paths = [jtu.keystr(path) for path, _ in jtu.tree_flatten_with_path(tree)[0]]
        found = ", ".join(f"{p or 'root'}: {a.shape}" for p, a in zip(paths, arrays))
        raise ValueError(
            f"every field of {name} must have the same shape; got {found}."
        )
    return Fields(arrays, structure)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One application of a stencil: the input fields, their layout and the
    call's extra arguments."""

    fields: Fields
    layouts: tuple[DimLayout, ...]
    index: WindowIndex
    boundary: str
    cval: Cval
    args: tuple
    kwargs: dict

    def taps(self, func: Callable) -> Taps | None:
        return record_taps(func, self.index, self.fields, self.args, self.kwargs)

    def padded(self, box: Sequence[tuple[int, int]]) -> list[Array]:
        """Every field's piece `box` (padded coordinates) of the padded input."""
        return [
            padded_box(x, self.layouts, box, self.boundary, self.cval)
            for x in self.fields.arrays
        ]

    def evaluate(
        self,
        func: Callable,
        box: Box,
        taps: Taps | None,
        mask: np.ndarray | None = None,
    ) -> PyTree[Array]:
        """`func` on every window whose output position lies in `box` (and in
        `mask`, if given: see `mask_guard`)."""
        layouts = self.layouts
        padded = tuple(
            (start * layout.stride, (stop - 1) * layout.stride + layout.span)
            for (start, stop), layout in zip(box, layouts)
        )
        sources = self.padded(padded)
        return self.evaluate_on(func, sources, box, taps, mask_guard(mask))

    def evaluate_on(
        self,
        func: Callable,
        sources: Sequence[Array],
        box: Box,
        taps: Taps | None,
        guard: Guard = _no_guard,
    ) -> PyTree[Array]:
        """`func` on the windows of `box`, read from `sources` (one per field):
        the padded input from padded coordinate `box[d][0] * stride` on, in
        every dim `d`."""
        if taps is None:
            return _window_lowering(func, sources, self, box, guard)
        return _shift_lowering(func, sources, self, box, taps, guard)


def check_outputs(
    values: Sequence[PyTree[Array]], boxes: Sequence[Box], names: Sequence[str]
) -> None:
    """Every function must return the same structure and per-position shape."""

    def signature(value: PyTree[Array], box: Box) -> tuple:
        leaves, structure = jtu.tree_flatten(value)
        return structure, tuple(jnp.shape(leaf)[len(box) :] for leaf in leaves)

    expected = signature(values[0], boxes[0])
    for value, box, name in zip(values, boxes, names):
        found = signature(value, box)
        if found != expected:
            raise ValueError(
                f"the functions of {names[0]} and {name} return different output "
                f"shapes per position: {expected[1]} (structure {expected[0]}) and "
                f"{found[1]} (structure {found[0]}); every function of a stencil "
                "must return the same shape."
            )


def keep_input(problem: Problem) -> Callable:
    """The function returning a window's anchor tap: its input value(s)."""
    relative, structure = problem.index.relative, problem.fields.structure
    anchor = tuple(0 if relative else layout.anchor for layout in problem.layouts)

    def keep(windows: PyTree, *args: Any, **kwargs: Any) -> PyTree:
        del args, kwargs  # the call's extra arguments, unused
        values = [window[anchor] for window in structure.flatten_up_to(windows)]
        return structure.unflatten(values)

    return keep


@dataclasses.dataclass(frozen=True)
class Table:
    """A region table resolved against a problem: the static owner plan, and
    for every owner present its function, taps and name."""

    plan: Plan
    funcs: dict[int, Callable]
    taps: dict[int, Taps | None]
    names: dict[int, str]


def resolve_table(
    problem: Problem,
    funcs: Sequence[Callable | None],
    regions: Sequence[Region],
    frame: Region | None = None,
) -> Table:
    """`funcs[0]` is the default function (or `None`), `funcs[r + 1]` the
    function of `regions[r]`. With a `frame`, positions outside it keep their
    input value (the window's anchor tap)."""
    table = plan(problem.layouts, regions, funcs[0] is not None, frame)
    funcs = (*funcs, keep_input(problem))
    names = [describe(region) for region in (None, *regions, frame)]
    return make_table(problem, table, funcs, names)


def make_table(
    problem: Problem,
    table: Plan,
    funcs: Sequence[Callable | None],
    names: Sequence[str],
    hint: str = "",
) -> Table:
    """The table of `table`'s owners: owner `o` runs `funcs[o]`, named
    `names[o]`. A position owned by none (`-1`) is an error naming it (`hint`
    appended)."""
    uncovered = np.argwhere(table.owners < 0)
    if len(uncovered):
        position = table.position(uncovered[0])
        raise ValueError(
            f"output position {position} is covered by no region and the stencil "
            "has no default function: add a region covering it with "
            f".at[index].set(func), or give a default function.{hint}"
        )
    owners = [int(owner) for owner in np.unique(table.owners)]
    used = {owner: cast(Callable, funcs[owner]) for owner in owners}
    return Table(
        plan=table,
        funcs=used,
        taps={owner: problem.taps(func) for owner, func in used.items()},
        names={owner: names[owner] for owner in owners},
    )


def _volume(box: Box) -> int:
    return math.prod(stop - start for start, stop in box)


def lower(problem: Problem, table: Table) -> PyTree[Array]:
    """Apply a resolved region table to `problem`, region by region."""

    def evaluate(
        boxes: Sequence[Box],
        order: Sequence[int],
        masks: Sequence[np.ndarray | None],
    ) -> list[PyTree[Array]]:
        # The largest box last: its reads of the input are then the first
        # terms of the input's cotangent, and the strips' (`_boundary._read`)
        # are added into it in place.
        values: list[PyTree[Array]] = [None] * len(boxes)
        for i in sorted(range(len(boxes)), key=lambda i: _volume(boxes[i])):
            values[i] = problem.evaluate(
                table.funcs[order[i]], boxes[i], table.taps[order[i]], masks[i]
            )
        check_outputs(values, boxes, [table.names[o] for o in order])
        return values

    tiled = decompose(table.plan)
    if tiled is not None:
        tiles, tiling = tiled
        boxes, order = zip(*tiles)
        shape = out_shape(problem.layouts)
        values = evaluate(boxes, order, [None] * len(boxes))
        return tile_together(shape, tiling, boxes, values)
    owners = list(table.funcs)
    boxes, masks = zip(*(owner_mask(table.plan, owner) for owner in owners))
    values = evaluate(boxes, owners, masks)
    return select_masked(problem.layouts, boxes, masks, values)
