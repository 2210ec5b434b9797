"""The row lowering: one function's inner rows as flat slices, without pads.

XLA:CPU emits a `pad` inside a loop as a branch per element, which keeps the
loop from vectorising, so the fused join of `_assemble` (every tile padded to
the grid and summed) runs at about half the copy's bandwidth. When one function
(of taps, or of its whole window) is applied with stride 1 and the output has
the input's extent in every dim but the first, most rows need no padding at
all:

- along dim 0 the rows `row_range` picks read only input rows;
- along the later dims, a tap's plane over those rows is one contiguous slice
  of the row-major flattened input. A position whose tap falls outside the
  input along a later dim reads a neighbouring row's element there, and a
  `select` puts the padding's value in its place (`row_planes`): the
  boundary's constant, or, for the modes that repeat the input, the element
  the padding repeats, read by another slice of the flat input (`_repeats`).

So the rows are one branch-free loop, and only the few rows above and below
them are evaluated as padded boxes (`_lower._by_rows` joins the three along
dim 0). The selects come before the function, so the function sees exactly
its windows, as on the tiles: values and derivatives are theirs.
"""

from __future__ import annotations

import functools as ft
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from jax import lax
from jaxtyping import Array

from ._boundary import fill_value, padding_source
from ._problem import Problem, Taps


# Outside positions `[q0, q1)` along a later dim whose padding repeats the
# input element `shift` flat positions away, or `None`: the boundary's constant.
Group = tuple[int, int, int | None]


@ft.lru_cache(maxsize=1024)
def _repeats(size: int, offset: int, mode: str, stride: int) -> tuple[Group, ...]:
    """Along a later dim of `size` read at `offset`: the positions whose read
    falls outside the input, grouped by the flat shift (`stride` per index) to
    the element the padding repeats there (`_boundary.padding_source`)."""
    groups: list[list] = []
    for q in range(size):
        read = q + offset
        if 0 <= read < size:
            continue
        source = padding_source(size, read, mode)
        shift = None if source is None else (source - read) * stride
        if groups and groups[-1][1] == q and groups[-1][2] == shift:
            groups[-1][1] = q + 1
        else:
            groups.append([q, q + 1, shift])
    return tuple((q0, q1, shift) for q0, q1, shift in groups)


def _tap_reads(problem: Problem, tap: Sequence[int]) -> tuple[int, list]:
    """A tap's flat offset from its output position, and per later dim it
    leaves the input along: `(dim, groups)` (`_repeats`)."""
    shape, layouts = problem.fields.shape, problem.layouts
    strides = [math.prod(shape[d + 1 :]) for d in range(len(shape))]
    offsets = [t * layout.dilation - layout.lo for t, layout in zip(tap, layouts)]
    delta = sum(o * s for o, s in zip(offsets, strides))
    leaving = [
        (d, _repeats(shape[d], offsets[d], problem.boundary, strides[d]))
        for d in range(1, len(shape))
        if offsets[d]
    ]
    return delta, [(d, groups) for d, groups in leaving if groups]


def row_range(problem: Problem, taps: Taps) -> tuple[int, int] | None:
    """The output rows `[a, b)` that `row_planes` can read, or `None` where the
    row lowering does not apply (a stride, an output extent differing from the
    input's after dim 0, or no such row)."""
    layouts, shape = problem.layouts, problem.fields.shape
    if len(layouts) < 2 or any(layout.stride != 1 for layout in layouts):
        return None
    if any(layout.out != layout.size for layout in layouts[1:]):
        return None
    a, b = layouts[0].interior
    # Every slice must lie inside the flat input (a neighbouring row may be
    # read; one before the first or after the last may not).
    row, total = math.prod(shape[1:]), math.prod(shape)
    for _, tap in taps:
        delta, leaving = _tap_reads(problem, tap)
        shifts = [
            [0, *(s for *_, s in groups if s is not None)] for _, groups in leaving
        ]
        for chosen in itertools.product(*shifts):
            read = delta + sum(chosen)
            a = max(a, -(read // row))  # ceil(-read / row)
            b = min(b, (total - read) // row)
    return (a, b) if a < b else None


def row_planes(problem: Problem, taps: Taps, rows: tuple[int, int]) -> list[Array]:
    """Every tap's plane over output rows `rows` and all of every later dim,
    flattened (row-major): a flat slice of its field, and where the tap leaves
    the input along a later dim the padding's value selected in."""
    shape = problem.fields.shape
    a, b = rows
    row = math.prod(shape[1:])
    length = (b - a) * row
    flats = [lax.reshape(x, (x.size,)) for x in problem.fields.arrays]
    coordinates: dict[int, Array] = {}

    def coordinate(dim: int) -> Array:
        """Every position's index along later dim `dim`."""
        if dim not in coordinates:
            index = lax.iota(np.int32, length)
            inner = math.prod(shape[dim + 1 :])
            if inner > 1:
                index = lax.div(index, np.int32(inner))
            coordinates[dim] = lax.rem(index, np.int32(shape[dim]))
        return coordinates[dim]

    def within(dim: int, q0: int, q1: int) -> Array:
        """Where the index along `dim` lies in `[q0, q1)`."""
        index = coordinate(dim)
        if q0 == 0:
            return lax.lt(index, np.int32(q1))
        if q1 == shape[dim]:
            return lax.ge(index, np.int32(q0))
        return lax.bitwise_and(lax.ge(index, np.int32(q0)), lax.lt(index, np.int32(q1)))

    planes = []
    for field, tap in taps:
        flat = flats[field]
        delta, leaving = _tap_reads(problem, tap)

        def read(shift: int, flat: Array = flat) -> Array:
            start = a * row + shift
            return lax.slice(flat, (start,), (start + length,))

        def fill(flat: Array = flat) -> Array:
            return lax.full((length,), fill_value(problem.cval, flat.dtype))

        planes.append(_select_padding(read, fill, within, leaving, delta))
    return planes


def _select_padding(
    read: Callable[[int], Array],
    fill: Callable[[], Array],
    within: Callable[[int, int, int], Array],
    leaving: list,
    shift: int,
) -> Array:
    """The plane read at flat `shift`, with the padding's value selected in
    along every dim of `leaving` (`_tap_reads`), the first outermost."""
    if not leaving:
        return read(shift)
    (dim, groups), rest = leaving[0], leaving[1:]
    plane = _select_padding(read, fill, within, rest, shift)
    for q0, q1, repeat in groups:
        if repeat is None:
            padding = fill()
        else:
            padding = _select_padding(read, fill, within, rest, shift + repeat)
        plane = lax.select(within(dim, q0, q1), padding, plane)
    return plane
