"""Region tables: which function computes which output position.

A region is an index (ints, slices with any step, `...`, or a static NumPy
boolean mask) read against the *input* array's shape; an output position
belongs to it when the input coordinate of its window's anchor is selected.
Later regions win where they overlap; the default function (if any) covers
everything first. A *data* region (`DataMask`: a `jax.Array` mask or label
map, see `_data_regions.py`) owns no position statically: `stack_data` marks
where it may win, and the lowering selects per position.

`plan` resolves the table to one static owner per output position (on a grid
compressed to the cells between region edges), and `decompose` cuts the output
grid into boxes of a single owner (guillotine cuts along each dim in turn),
also separating the interior (windows inside the unpadded input) from the
boundary, so that each function runs only on its own boxes and the interior
reads the input without padding.
"""

from __future__ import annotations

import dataclasses
import functools as ft
import itertools
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._geometry import DimLayout, is_int


Box = tuple[tuple[int, int], ...]

# Beyond this many boxes the per-box programs cost more than they save; each
# function is then evaluated on the bounding box of its positions and selected
# with a static mask.
MAX_BOXES = 64


@dataclasses.dataclass(frozen=True, eq=False)
class Mask:
    """A static boolean mask, hashable so it can live in a static field."""

    array: np.ndarray

    def __hash__(self) -> int:
        return hash((self.array.shape, self.array.tobytes()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mask) and np.array_equal(self.array, other.array)

    def __repr__(self) -> str:
        return f"Mask(shape={self.array.shape}, count={int(self.array.sum())})"


@dataclasses.dataclass(frozen=True)
class DataMask:
    """The key of a data region: its mask (`labels=False`) or label map
    (`labels=True`) is an array carried by the region's function, known only
    when the stencil runs. Statically it may select every position whose
    anchor lies inside the input."""

    labels: bool


# A normalised index: a mask, a data region, or a tuple with per-dim `int`,
# `(start, stop, step)` triples for slices, and `...`.
Region = Mask | DataMask | tuple[Any, ...]


def normalize_region(index: Any) -> Region:
    """Validate a region index and make it hashable."""
    if isinstance(index, np.ndarray) and index.dtype == np.bool_:
        return Mask(index.copy())
    items = index if isinstance(index, tuple) else (index,)
    out: list[Any] = []
    for item in items:
        if item is Ellipsis:
            out.append(Ellipsis)
        elif isinstance(item, slice):
            for bound in (item.start, item.stop, item.step):
                if bound is not None and not is_int(bound):
                    raise TypeError(
                        f"region slice bounds must be ints or None; got {item!r} in "
                        f"index {index!r}."
                    )
            if item.step == 0:
                raise ValueError(f"region slice step must not be 0; got {item!r}.")
            bounds = (item.start, item.stop, item.step)
            out.append(tuple(None if b is None else operator.index(b) for b in bounds))
        elif is_int(item):
            out.append(operator.index(item))
        else:
            raise TypeError(
                "a region index must be ints, slices, `...` or a static NumPy "
                f"boolean mask; got {item!r} of type {type(item).__name__} in "
                f"index {index!r}."
            )
    if out.count(Ellipsis) > 1:
        raise IndexError(f"a region index may hold one `...`; got {index!r}.")
    return tuple(out)


def describe(region: Region | None) -> str:
    """The region as the user wrote it, for error messages."""
    if region is None:
        return "the default function"
    if isinstance(region, Mask):
        return f"region {region!r}"
    if isinstance(region, DataMask):
        return "a label map's labels 1.." if region.labels else "a data mask region"

    def item(entry: Any) -> str:
        if entry is Ellipsis:
            return "..."
        if isinstance(entry, tuple):
            start, stop, step = ("" if v is None else str(v) for v in entry)
            return f"{start}:{stop}" + (f":{step}" if step else "")
        return str(entry)

    return f"region [{', '.join(item(entry) for entry in region)}]"


def _dim_selection(entry: Any, size: int, dim: int, region: Region) -> np.ndarray:
    """Boolean selection of the input coordinates of one dim."""
    selected = np.zeros(size, dtype=bool)
    if isinstance(entry, tuple):
        selected[slice(*entry)] = True
        return selected
    if not -size <= entry < size:
        raise IndexError(
            f"{describe(region)} is outside the anchor grid: index {entry} in dim "
            f"{dim}, where the input has length {size} (allowed {-size}..{size - 1})."
        )
    selected[entry] = True
    return selected


def _anchor_coordinates(layout: DimLayout) -> np.ndarray:
    """Input coordinate of each output position's anchor tap, in one dim."""
    return layout.anchor_input(np.arange(layout.out))


def _output_selections(
    region: Region, layouts: Sequence[DimLayout]
) -> list[np.ndarray] | np.ndarray:
    """The output positions `region` selects: one boolean vector per dim
    (their outer product), or for a mask a boolean map of the output grid."""
    shape = tuple(layout.size for layout in layouts)
    anchors = [_anchor_coordinates(layout) for layout in layouts]
    inside = [(a >= 0) & (a < n) for a, n in zip(anchors, shape)]
    clipped = [np.clip(a, 0, n - 1) for a, n in zip(anchors, shape)]
    if isinstance(region, Mask):
        if region.array.shape != shape:
            raise ValueError(
                f"a boolean mask region must have the input array's shape {shape}; "
                f"got {region.array.shape}."
            )
        return region.array[np.ix_(*clipped)] & _outer_and(inside)
    if isinstance(region, DataMask):
        return inside
    entries = list(region)
    if Ellipsis in entries:
        at = entries.index(Ellipsis)
        entries[at : at + 1] = [(None, None, None)] * (len(shape) - len(entries) + 1)
    if len(entries) > len(shape):
        raise IndexError(
            f"{describe(region)} has {len(entries)} entries but the input has rank "
            f"{len(shape)}."
        )
    entries += [(None, None, None)] * (len(shape) - len(entries))
    return [
        _dim_selection(entry, n, dim, region)[c] & ok
        for dim, (entry, n, c, ok) in enumerate(zip(entries, shape, clipped, inside))
    ]


def _outer_and(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Outer product of boolean vectors (one per dim)."""
    ndim = len(vectors)
    shaped = [
        np.asarray(v, bool).reshape([-1 if d == dim else 1 for d in range(ndim)])
        for dim, v in enumerate(vectors)
    ]
    return ft.reduce(np.logical_and, shaped)


def _changes(vector: np.ndarray) -> set[int]:
    return set((np.flatnonzero(vector[1:] != vector[:-1]) + 1).tolist())


@dataclasses.dataclass(frozen=True)
class Plan:
    """Owners on a compressed grid: cell `c` of dim `d` spans output positions
    `edges[d][c]:edges[d][c + 1]`, and every position of a cell has one owner
    (0: the default function, `r + 1`: region `r`, -1: none) and lies wholly
    inside or outside the interior."""

    edges: tuple[tuple[int, ...], ...]
    owners: np.ndarray
    interior: np.ndarray

    def position(self, cell: Sequence[int] | np.ndarray) -> tuple[int, ...]:
        return tuple(int(self.edges[d][c]) for d, c in enumerate(cell))


def cell_plan(owners: np.ndarray) -> Plan:
    """The plan of a grid owned position by position (`owners`, one per
    output position): one cell per position, none counted as interior."""
    return Plan(
        edges=tuple(tuple(range(n + 1)) for n in owners.shape),
        owners=owners,
        interior=np.zeros(owners.shape, dtype=bool),
    )


def plan(
    layouts: Sequence[DimLayout],
    regions: Sequence[Region],
    has_default: bool,
    frame: Region | None = None,
) -> Plan:
    """Resolve the region table over the output grid; later regions win.

    With a `frame` (smap's offset box), positions outside it belong to owner
    `len(regions) + 1`, whatever the regions say. Data regions own nothing
    (see `stack_data`), but their cells separate anchors inside the input from
    those in the padding.
    """
    framed = () if frame is None else (frame,)
    selections = [_output_selections(r, layouts) for r in (*regions, *framed)]
    cuts = [{0, layout.out, *layout.interior} for layout in layouts]
    for selection in selections:
        for dim, cut in enumerate(cuts):
            if isinstance(selection, list):
                cut |= _changes(selection[dim])
            else:  # a mask: full resolution
                cut |= set(range(layouts[dim].out))
    edges = tuple(
        tuple(sorted(c for c in cut if 0 <= c <= layout.out))
        for cut, layout in zip(cuts, layouts)
    )
    starts = [np.asarray(e[:-1]) for e in edges]
    owners = np.full(tuple(map(len, starts)), 0 if has_default else -1, np.int32)
    hits = [
        _outer_and([vector[c] for vector, c in zip(selection, starts)])
        if isinstance(selection, list)
        else selection[np.ix_(*starts)]
        for selection in selections
    ]
    for number, hit in enumerate(hits[: len(regions)], start=1):
        if not isinstance(regions[number - 1], DataMask):
            owners = np.where(hit, number, owners)
    if frame is not None:
        owners = np.where(hits[-1], owners, len(regions) + 1)
    interior = _outer_and(
        [
            (c >= layout.interior[0]) & (c < layout.interior[1])
            for c, layout in zip(starts, layouts)
        ]
    )
    return Plan(edges, owners, interior)


# Per owner of a stacked plan: the static owner and the numbers of the data
# regions that may win over it, in table order.
Stack = tuple[int, tuple[int, ...]]


def stack_data(
    plan: Plan, layouts: Sequence[DimLayout], regions: Sequence[Region]
) -> tuple[Plan, list[Stack]]:
    """`plan` with each owner split by the data regions that may win over it:
    data region `r` (number `r + 1`) may win at the positions whose anchor lies
    inside the input and whose static owner comes earlier in the table (a lower
    number: the default, earlier regions; uncovered positions stay `-1`). The
    new owners number the distinct stacks."""
    starts = [np.asarray(edges[:-1]) for edges in plan.edges]
    inside = _outer_and(
        [
            vector[c]
            for vector, c in zip(_output_selections(DataMask(False), layouts), starts)
        ]
    )
    numbers = [n for n, r in enumerate(regions, start=1) if isinstance(r, DataMask)]
    above = [inside & (plan.owners < n) for n in numbers]
    columns = np.stack([plan.owners, *above], axis=-1).reshape(-1, 1 + len(numbers))
    keys, ids = np.unique(columns, axis=0, return_inverse=True)
    owners = np.where(plan.owners < 0, -1, ids.reshape(plan.owners.shape))
    stacks = [
        (int(key[0]), tuple(n for n, on in zip(numbers, key[1:]) if on)) for key in keys
    ]
    return dataclasses.replace(plan, owners=owners.astype(np.int32)), stacks


def _equal_runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of equal sub-arrays along axis 0."""
    runs: list[tuple[int, int]] = []
    for i in range(len(labels)):
        if runs and np.array_equal(labels[i], labels[runs[-1][0]]):
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


# A guillotine tiling: `(axis, children)`, the children consecutive along
# `axis`; a child is a sub-tiling or the index of a tile.
Tiling = tuple[int, list[Any]]

# Up to this rank every order of cutting the axes is tried.
MAX_ORDERED_RANK = 4


def decompose(plan: Plan) -> tuple[list[tuple[Box, int]], Tiling] | None:
    """Tiles of one owner each, each inside or outside the interior, and the
    tiling that concatenates them back into the grid; `None` when more than
    `MAX_BOXES` tiles would be needed.

    The axes can be cut in any order: rows first gives a boundary column's
    corners tiles of their own, columns first keeps the columns whole. Every
    order is tried (up to `MAX_ORDERED_RANK` dims) and the fewest tiles win."""
    ndim = plan.owners.ndim
    orders = (
        itertools.permutations(range(ndim))
        if ndim <= MAX_ORDERED_RANK
        else [tuple(range(ndim))]
    )
    best = None
    for order in orders:
        found = _guillotine(plan, order)
        if found is not None and (best is None or len(found[0]) < len(best[0])):
            best = found
    return best


def _guillotine(
    plan: Plan, order: Sequence[int]
) -> tuple[list[tuple[Box, int]], Tiling] | None:
    """`decompose`, cutting the axes in `order`."""
    labels = plan.owners * 2 + plan.interior  # distinct (owner, interior) pairs
    labels = np.transpose(labels, order)
    tiles: list[tuple[Box, int]] = []

    def cut(sub: np.ndarray, spans: dict[int, tuple[int, int]]) -> Tiling:
        axis = order[len(spans)]
        edges = plan.edges[axis]
        children: list[Any] = []
        for start, stop in _equal_runs(sub):
            inner = {**spans, axis: (edges[start], edges[stop])}
            if sub.ndim == 1:
                box = tuple(inner[d] for d in range(len(order)))
                tiles.append((box, int(sub[start]) // 2))
                children.append(len(tiles) - 1)
            else:
                children.append(cut(sub[start], inner))
            if len(tiles) > MAX_BOXES:
                raise _TooManyTiles
        return axis, children

    try:
        tiling = cut(labels, {})
    except _TooManyTiles:
        return None
    return tiles, tiling


class _TooManyTiles(Exception):
    pass


def owner_mask(plan: Plan, owner: int) -> tuple[Box, np.ndarray]:
    """Bounding box of `owner`'s positions and the static mask within it."""
    cells = plan.owners == owner
    box, slices = [], []
    for axis, edges in enumerate(plan.edges):
        others = tuple(a for a in range(cells.ndim) if a != axis)
        hits = np.flatnonzero(cells.any(axis=others))
        box.append((edges[hits[0]], edges[hits[-1] + 1]))
        lengths = np.diff(edges)[hits[0] : hits[-1] + 1]
        slices.append(np.repeat(np.arange(hits[0], hits[-1] + 1), lengths))
    return tuple(box), cells[np.ix_(*slices)]
