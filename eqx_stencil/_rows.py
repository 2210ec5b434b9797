"""The row lowering: one function's inner rows as flat slices, without pads.

XLA:CPU emits a `pad` inside a loop as a branch per element, which keeps the
loop from vectorising, so the fused join of `_assemble` (every tile padded to
the grid and summed) runs at about half the copy's bandwidth. When one function
is applied with stride 1 and the output has the input's extent in every dim but
the first, most rows need no padding at all:

- along dim 0 the rows `row_range` picks read only input rows;
- along the later dims, a tap's plane over those rows is one contiguous slice
  of the row-major flattened input. A position whose tap falls outside the
  input along a later dim reads a neighbouring row's element there, and a
  `select` puts the boundary's constant in its place (`row_planes`).

So the rows are one branch-free loop, and only the few rows above and below
them are evaluated as padded boxes (`_lower._by_rows` joins the three along
dim 0). The select comes before the function, so the function sees exactly
its windows, as on the tiles: values and derivatives are theirs.
"""

from __future__ import annotations

import functools as ft
import math
from collections.abc import Sequence

import numpy as np
from jax import lax
from jaxtyping import Array

from ._boundary import fill_value
from ._geometry import DimLayout
from ._problem import Problem, Taps


def _offsets(layouts: Sequence[DimLayout], tap: Sequence[int]) -> list[int]:
    """Input offset of window tap `tap` from its output position, per dim
    (stride 1: output `o` reads input `o + offset`)."""
    return [t * layout.dilation - layout.lo for t, layout in zip(tap, layouts)]


def _flat_offset(shape: Sequence[int], offsets: Sequence[int]) -> int:
    """`offsets` in the row-major flattened input."""
    return sum(o * math.prod(shape[d + 1 :]) for d, o in enumerate(offsets))


def row_range(problem: Problem, taps: Taps) -> tuple[int, int] | None:
    """The output rows `[a, b)` that `row_planes` can read, or `None` where the
    row lowering does not apply (a stride, an output extent differing from the
    input's after dim 0, a non-constant boundary along a later dim, or no such
    row)."""
    layouts, shape = problem.layouts, problem.fields.shape
    if len(layouts) < 2 or any(layout.stride != 1 for layout in layouts):
        return None
    later = layouts[1:]
    if any(layout.out != layout.size for layout in later):
        return None
    padded = any(layout.lo or layout.hi for layout in later)
    if padded and problem.boundary != "constant":
        return None
    a, b = layouts[0].interior
    # Every tap's slice must lie inside the flat input (a neighbouring row
    # may be read; one before the first or after the last may not).
    row, total = math.prod(shape[1:]), math.prod(shape)
    for _, tap in taps:
        delta = _flat_offset(shape, _offsets(layouts, tap))
        a = max(a, -(delta // row))  # ceil(-delta / row)
        b = min(b, (total - delta) // row)
    return (a, b) if a < b else None


def row_planes(problem: Problem, taps: Taps, rows: tuple[int, int]) -> list[Array]:
    """Every tap's plane over output rows `rows` and all of every later dim,
    flattened (row-major): one flat slice of its field each, the boundary's
    constant selected where the tap falls outside the input along a later
    dim."""
    layouts, shape = problem.layouts, problem.fields.shape
    a, b = rows
    row = math.prod(shape[1:])
    length = (b - a) * row
    flats = [lax.reshape(x, (x.size,)) for x in problem.fields.arrays]
    coordinates: dict[int, Array] = {}

    def inside(dim: int, offset: int) -> Array:
        """Where position + `offset` along later dim `dim` lies in the input."""
        if dim not in coordinates:
            index = lax.iota(np.int32, length)
            inner = math.prod(shape[dim + 1 :])
            if inner > 1:
                index = lax.div(index, np.int32(inner))
            coordinates[dim] = lax.rem(index, np.int32(shape[dim]))
        if offset < 0:
            return lax.ge(coordinates[dim], np.int32(-offset))
        return lax.lt(coordinates[dim], np.int32(shape[dim] - offset))

    planes = []
    for field, tap in taps:
        offsets = _offsets(layouts, tap)
        start = a * row + _flat_offset(shape, offsets)
        plane = lax.slice(flats[field], (start,), (start + length,))
        masks = [inside(d, o) for d, o in enumerate(offsets) if d > 0 and o != 0]
        if masks:
            fill = lax.full((length,), fill_value(problem.cval, plane.dtype))
            plane = lax.select(ft.reduce(lax.bitwise_and, masks), plane, fill)
        planes.append(plane)
    return planes
