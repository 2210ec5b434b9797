"""kscan: the exact sequential sweep, vectorised where the dependencies allow.

The definition: windows are visited in row-major order of the output (or the
reverse), each result is written at its window's anchor in the working padded
array before the next window is read, and the results are returned.

The plan. A tap `t` of an output `o` reads padded coordinate `o*s + t*d`,
which is the anchor of output `o + delta`, `delta = (t - anchor) * d / s`
(when that divides). Scanning the leading `m` axes one step at a time and
updating the trailing block of axes at once gives the sequential result
exactly when no tap reads, within one step (`delta[:m] == 0`), a cell the
sequential order would already have updated (`delta[m:]` earlier in the
order). `scan_axes` picks the smallest such `m`: `m = 1` is one `lax.scan`
step per row (explicit time marching), `m = ndim` the cell-by-cell sweep
(Gauss-Seidel). A step reads its windows with `dynamic_slice` and writes its
results with one `dynamic_update_slice`: O(block) work per step.

The working array. The cell sweep keeps the whole padded array (`_Padded`).
The row sweep along one axis keeps only the last rows of results its taps
read and emits each row as the scan's output (`_Recent`); along several axes
it keeps the anchors, the output arrays (`_Anchors`). Either way the padded
array's other cells (padding, stride gaps) are never written, so a step
reads them from static pieces of the padded input: no padded copy to build
and slice down, the program of a hand-written row scan. (Rows padded by
data, a boundary fill other than `"constant"`, keep the padded array: a step
would read each padding piece on its own.)
"""

from __future__ import annotations

import abc
import dataclasses
import functools as ft
import math
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax import lax
from jaxtyping import Array, PyTree

from ._assemble import check_outputs, tile_together
from ._geometry import DimLayout, out_shape
from ._lower import evaluate_on
from ._problem import Problem, Table, Taps
from ._regions import MAX_BOXES, Box, Plan, Tiling, cell_plan, decompose


Work = tuple[Array, ...]  # the working fields
Lead = Sequence[Array]  # a step's index along the scanned axes

# Above this many runs of alike steps, one scan switches between the patterns.
MAX_SCAN_SEGMENTS = 8


def _every_tap(table: Table, layouts: Sequence[DimLayout]) -> set[tuple[int, ...]]:
    """The window taps some function reads (a whole-window one: all)."""
    kernel = tuple(layout.kernel for layout in layouts)
    every = set(np.ndindex(*kernel))
    taps = set()
    for read in table.taps.values():
        taps |= every if read is None else {tap for _, tap in read}
    return taps


def _deltas(table: Table, layouts: Sequence[DimLayout]) -> list[tuple[int, ...]]:
    """Output offsets of the cells whose updated values the taps may read."""
    deltas = set()
    for tap in _every_tap(table, layouts):
        shifts = [(t - lay.anchor) * lay.dilation for t, lay in zip(tap, layouts)]
        if all(shift % lay.stride == 0 for shift, lay in zip(shifts, layouts)):
            deltas.add(tuple(s // lay.stride for s, lay in zip(shifts, layouts)))
    return sorted(deltas)


def scan_axes(deltas: Sequence[tuple[int, ...]], ndim: int, reverse: bool) -> int:
    """The fewest leading axes to step through sequentially (see module doc)."""

    def earlier(delta: tuple[int, ...]) -> bool:
        zero = (0,) * len(delta)
        return delta > zero if reverse else delta < zero

    for m in range(ndim + 1):
        if not any(all(v == 0 for v in d[:m]) and earlier(d[m:]) for d in deltas):
            return m
    return ndim


def _full_owners(plan: Plan) -> np.ndarray:
    owners = plan.owners
    for axis, edges in enumerate(plan.edges):
        owners = np.repeat(owners, np.diff(edges), axis=axis)
    return owners


class _Working(abc.ABC):
    """How a sweep keeps its working fields: what a step reads and writes.
    `keys[k]` numbers the way step `k` (row-major) reads; steps read alike
    and owned alike share a traced branch."""

    keys: np.ndarray
    # Whether the steps' rows are the scans' outputs (`result`'s `rows`)
    # rather than written into the working fields.
    emits_rows: bool = False

    @abc.abstractmethod
    def prepare(self, key: int, box: Box, taps: Taps | None) -> None:
        """Build what the steps of `key` read for `box` (before the scans)."""

    @abc.abstractmethod
    def start(self) -> Work:
        """The working fields before the first step."""

    @abc.abstractmethod
    def sources(
        self, work: Work, lead: Lead, key: int, box: Box, taps: Taps | None
    ) -> list[Array]:
        """Every field's source of the windows of `box` at step `lead`: the
        working padded array from `problem.source_range(box)` on."""

    @abc.abstractmethod
    def write(self, work: Work, lead: Lead, row: Work) -> Work:
        """Write a step's results (one block per field) at their anchors."""

    @abc.abstractmethod
    def result(self, work: Work, rows: Work) -> list[Array]:
        """The results, one array per field, from the final working fields
        and, if `emits_rows`, every step's row in step order (`rows`, one
        array of shape `(steps, *row)` per field; else empty)."""


def sweep(problem: Problem, table: Table, reverse: bool) -> PyTree[Array]:
    """The sequential sweep of `table`'s functions over `problem`. With several
    fields, each function returns one value per field (the fields' structure)
    and every field is written back."""
    layouts = problem.layouts
    ndim = len(layouts)
    m = scan_axes(_deltas(table, layouts), ndim, reverse)
    shape = out_shape(layouts)
    lead, trail = shape[:m], shape[m:]
    owners = _full_owners(table.plan).reshape(math.prod(lead), *trail)
    steps = np.indices(lead).reshape(m, math.prod(lead)).T  # row-major
    working = _working(problem, table, m, steps, reverse)
    # Steps owned alike and read alike share a branch.
    patterns: dict[tuple[bytes, int], int] = {}
    tiled: list[tuple[int, list[tuple[Box, int]], Tiling]] = []
    pattern_ids = []
    for row, key in zip(map(np.asarray, owners), map(int, working.keys)):
        if (row.tobytes(), key) not in patterns:
            patterns[row.tobytes(), key] = len(tiled)
            tiles, tiling = _tiles(row, m)
            for box, owner in tiles:
                working.prepare(key, box, table.taps[owner])
            tiled.append((key, tiles, tiling))
        pattern_ids.append(patterns[row.tobytes(), key])
    blocks = [
        ft.partial(_step, problem, table, working, m, trail, *pattern)
        for pattern in tiled
    ]

    def step(work: Work, xs: tuple[Array, Array], block: Callable) -> tuple:
        counter, pattern = xs
        index = [counter // math.prod(lead[d + 1 :]) % lead[d] for d in range(m)]
        work, row = block(work, index, pattern)
        return work, (row if working.emits_rows else None)

    def switched(work: Work, index: Lead, pattern: Array) -> tuple[Work, Work]:
        branches = [lambda w, i, b=b: b(w, i) for b in blocks]
        return lax.switch(pattern, branches, work, index)

    # JAX's default int (int64 under x64), the type of the Python ints they
    # meet in the window and write indices.
    counters = np.arange(math.prod(lead), dtype=jnp.int_)
    pattern_ids = np.asarray(pattern_ids, jnp.int_)
    # Runs of steps owned alike each get a scan of their own; with many runs,
    # one scan switches between the patterns.
    changes = np.flatnonzero(np.diff(pattern_ids)) + 1
    runs = np.split(np.arange(len(counters)), changes)
    segmented = len(runs) <= MAX_SCAN_SEGMENTS
    work = working.start()
    emitted: dict[int, Work] = {}  # each run's rows, by its first step
    for run in (runs if segmented else [counters])[:: -1 if reverse else 1]:
        fixed = blocks[pattern_ids[run[0]]]
        block = (lambda w, i, p, b=fixed: b(w, i)) if segmented else switched
        xs = (jnp.asarray(counters[run]), jnp.asarray(pattern_ids[run]))
        body = ft.partial(step, block=block)
        if m == 0:
            work, row = body(work, (xs[0][0], xs[1][0]))
            rows = None if row is None else tuple(r[None] for r in row)
        else:
            work, rows = lax.scan(body, work, xs, reverse=reverse)
        if rows is not None:
            emitted[int(run[0])] = rows
    in_order = [emitted[first] for first in sorted(emitted)]
    rows = tuple(jnp.concatenate(parts) for parts in zip(*in_order))
    return problem.fields.structure.unflatten(working.result(work, rows))


def _working(
    problem: Problem, table: Table, m: int, steps: np.ndarray, reverse: bool
) -> _Working:
    """The cell sweep keeps the padded array; the row sweep keeps only the
    anchors, unless its rows' padding is data (a boundary fill other than
    `"constant"` on the trailing axes): each step would then read it from
    pieces of its own, more operations per step than one read of the padded
    array."""
    layouts = problem.layouts
    padded_rows = any(lay.lo > 0 or lay.hi > 0 for lay in layouts[m:])
    if m == len(layouts) or (padded_rows and problem.boundary != "constant"):
        return _Padded(problem, steps)
    if m == 1:
        return _Recent(problem, table, m, steps, reverse)
    return _Anchors(problem, table, m, steps)


def _tiles(pattern: np.ndarray, m: int) -> tuple[list[tuple[Box, int]], Tiling]:
    """The tiles of one step: the trailing block owned as `pattern` says."""
    plan = cell_plan(pattern.reshape((1,) * m + pattern.shape))
    tiled = decompose(plan)
    if tiled is None:
        raise ValueError(
            f"kscan: the regions cut one scan step into more than {MAX_BOXES} "
            "pieces; use fewer, larger regions."
        )
    return tiled


def _step(
    problem: Problem,
    table: Table,
    working: _Working,
    m: int,
    trail: tuple[int, ...],
    key: int,
    tiles: list[tuple[Box, int]],
    tiling: Tiling,
    work: Work,
    lead: Lead,
) -> tuple[Work, Work]:
    """One step: the trailing block at `lead`, read as `key` says; the new
    working fields and the step's row."""
    values = []
    for box, owner in tiles:
        taps = table.taps[owner]
        sources = working.sources(work, lead, key, box, taps)
        func, program = table.funcs[owner], table.programs[owner]
        value = evaluate_on(problem, func, sources, box, taps, program)
        values.append(_written_back(value, box, problem, table.names[owner]))
    boxes = [box for box, _ in tiles]
    check_outputs(values, boxes, [table.names[owner] for _, owner in tiles])
    # Rows written into the whole result are assembled in place; emitted
    # rows are one loop (`_Recent`).
    assembly = "concatenate" if working.emits_rows else "in_place"
    blocks = tile_together((1,) * m + trail, tiling, boxes, values, assembly)
    row = tuple(jnp.asarray(block, field.dtype) for block, field in zip(blocks, work))
    return working.write(work, lead, row), row


def _written_back(value: PyTree, box: Box, problem: Problem, name: str) -> list:
    """A function's values on `box`, one array per field, each one scalar per
    window (they are written back into the fields)."""
    structure = problem.fields.structure
    shape = tuple(stop - start for start, stop in box)
    leaves, found = jtu.tree_flatten(value)
    if found != structure or any(jnp.shape(leaf) != shape for leaf in leaves):
        shapes = jtu.tree_map(lambda leaf: jnp.shape(leaf)[len(box) :], value)
        raise ValueError(
            "kscan functions must return one scalar per window for each field "
            f"(it is written back into the fields, structure {structure}); "
            f"{name} returns {shapes}."
        )
    return leaves


class _Padded(_Working):
    """Working fields: the whole padded input, each result written at its
    anchor; the results are read at the anchors at the end."""

    def __init__(self, problem: Problem, steps: np.ndarray):
        self.problem = problem
        self.keys = np.zeros(len(steps), int)  # every step reads alike

    def prepare(self, key: int, box: Box, taps: Taps | None) -> None:
        del key, box, taps  # nothing static to build

    def start(self) -> Work:
        layouts = self.problem.layouts
        return tuple(self.problem.padded([(0, lay.padded_size) for lay in layouts]))

    def sources(
        self, work: Work, lead: Lead, key: int, box: Box, taps: Taps | None
    ) -> list[Array]:
        del key, taps
        layouts = self.problem.layouts
        ranges = self.problem.source_range(box)  # box: along the lead axes, (0, 1)
        starts = [i * lay.stride for i, lay in zip(lead, layouts)]
        starts += [start for start, _ in ranges[len(lead) :]]
        sizes = [stop - start for start, stop in ranges]
        return [lax.dynamic_slice(field, starts, sizes) for field in work]

    def write(self, work: Work, lead: Lead, row: Work) -> Work:
        layouts = self.problem.layouts
        anchors = [lay.anchor_offset for lay in layouts]
        starts = [i * lay.stride + a for i, lay, a in zip(lead, layouts, anchors)]
        starts += anchors[len(lead) :]
        trailing = layouts[len(lead) :]
        if all(lay.stride == 1 for lay in trailing):
            return tuple(
                lax.dynamic_update_slice(field, value, starts)
                for field, value in zip(work, row)
            )
        # Strided trailing dims: the anchors among the cells between them.
        sizes = [1] * len(lead) + [(lay.out - 1) * lay.stride + 1 for lay in trailing]
        index = (slice(None),) * len(lead)
        index += tuple(slice(None, None, lay.stride) for lay in trailing)
        return tuple(
            lax.dynamic_update_slice(
                field,
                lax.dynamic_slice(field, starts, sizes).at[index].set(value),
                starts,
            )
            for field, value in zip(work, row)
        )

    def result(self, work: Work, rows: Work) -> list[Array]:
        del rows  # written into the working fields
        ranges = _anchor_ranges(self.problem.layouts)
        starts, limits = [a for a, _ in ranges], [b for _, b in ranges]
        strides = [lay.stride for lay in self.problem.layouts]
        return [lax.slice(field, starts, limits, strides) for field in work]


def _anchor_ranges(layouts: Sequence[DimLayout]) -> list[tuple[int, int]]:
    """Per dim, the padded coordinates `[first, last + 1)` of the anchors."""
    return [
        (
            lay.anchor_offset,
            lay.anchor_offset + (lay.out - 1) * lay.stride + 1,
        )
        for lay in layouts
    ]


# A row's read, a tree of static pieces: rows of results so far, pieces of the
# padded input, and their joins.


@dataclasses.dataclass(frozen=True)
class _Results:
    """Results so far: outputs `lead + delta` along the scanned axes, the
    trailing `outputs` (`[start, stop)` per dim)."""

    delta: tuple[int, ...]
    outputs: tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class _Input:
    """The padded input: padded offset `offset` from the step's first source
    row along the scanned axes, trailing padded coordinates `ranges`
    (`(start, stop, step)` per dim)."""

    offset: tuple[int, ...]
    ranges: tuple[tuple[int, int, int], ...]


@dataclasses.dataclass(frozen=True)
class _Joined:
    """`parts` concatenated along `axis`."""

    axis: int
    parts: tuple[_Piece, ...]


@dataclasses.dataclass(frozen=True)
class _Interleaved:
    """`inner` written over `outer` at `outer`'s `start:stop:step` along
    `axis` (the anchors of a strided dim among the cells between them)."""

    axis: int
    outer: _Input
    start: int
    stop: int
    step: int
    inner: _Piece


_Piece = _Results | _Input | _Joined | _Interleaved


def _inputs(piece: _Piece) -> list[_Input]:
    """The pieces of the padded input that `piece` reads."""
    if isinstance(piece, _Results):
        return []
    if isinstance(piece, _Input):
        return [piece]
    if isinstance(piece, _Joined):
        return [leaf for part in piece.parts for leaf in _inputs(part)]
    return [piece.outer, *_inputs(piece.inner)]


class _Anchors(_Working):
    """The row sweep's working fields: the results, the output arrays, first
    holding the padded input at the anchors. A step's source is the working
    padded array rebuilt from the rows of results its taps read and static
    pieces of the padded input (`_row`); XLA keeps of it what the taps slice."""

    def __init__(self, problem: Problem, table: Table, m: int, steps: np.ndarray):
        self.problem, self.m, self.steps = problem, m, steps
        self.scanned = problem.layouts[:m]
        self.read: dict[tuple[int, ...], tuple[int, ...] | None] = {
            offset: self._delta(offset)
            for offset in self._offsets(_every_tap(table, problem.layouts))
        }
        # A step's key: which of the rows read hold results (the others lie
        # before the first or after the last row of outputs).
        self.grid: list[dict[tuple[int, ...], bool]] = []  # per key
        self.keys = self._keys()
        self.strips: dict[tuple[int, _Input], tuple[list[int], list[Array]]] = {}

    def _offsets(self, taps: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Padded offsets along the scanned axes of the rows `taps` read."""
        layouts = self.scanned
        return sorted(
            {tuple(t * lay.dilation for t, lay in zip(tap, layouts)) for tap in taps}
        )

    def _delta(self, offset: tuple[int, ...]) -> tuple[int, ...] | None:
        """The offset of the row of outputs whose anchors the row at padded
        `offset` holds (`None`: no anchors)."""
        shifts = [o - lay.anchor_offset for o, lay in zip(offset, self.scanned)]
        if any(shift % lay.stride for shift, lay in zip(shifts, self.scanned)):
            return None
        return tuple(shift // lay.stride for shift, lay in zip(shifts, self.scanned))

    def _keys(self) -> np.ndarray:
        steps = self.steps
        n = np.asarray([lay.out for lay in self.scanned])
        offsets = list(self.read)
        found = np.ones((len(steps), len(offsets)), bool)
        for column, offset in enumerate(offsets):
            delta = self.read[offset]
            if delta is None or not self._holds(delta):
                found[:, column] = False
            else:
                shifted = steps + np.asarray(delta, int)
                found[:, column] = np.all((shifted >= 0) & (shifted < n), axis=1)
        ids: dict[tuple[bool, ...], int] = {}
        keys = np.asarray([ids.setdefault(tuple(row), len(ids)) for row in found])
        self.grid = [dict(zip(offsets, grid)) for grid in ids]
        return keys

    def _holds(self, delta: tuple[int, ...]) -> bool:
        """Whether the working fields hold the row of outputs `delta` steps
        from a step's (where there is one): every row, here; else a row is
        read from the padded input."""
        del delta
        return True

    def _results(self, work: Work, f: int, lead: Lead, piece: _Results) -> Array:
        """Field `f`'s results of `piece` at step `lead`."""
        starts = [i + d for i, d in zip(lead, piece.delta)]
        starts += [a for a, _ in piece.outputs]
        sizes = [1] * self.m + [b - a for a, b in piece.outputs]
        return lax.dynamic_slice(work[f], starts, sizes)

    def _row(self, key: int, offset: tuple[int, ...], source: Box) -> _Piece:
        """The read of the working padded array's row at padded `offset` from
        the step's first source row, trailing padded coordinates `source`."""
        m, layouts = self.m, self.problem.layouts
        delta = self.read[offset]
        if delta is None or not self.grid[key][offset]:
            return _Input(offset, tuple((a, b, 1) for a, b in source))

        def split(k: int, ranges: tuple, outputs: tuple) -> _Piece:
            if k == len(layouts):
                return _Results(delta, outputs)
            lay, (c0, c1) = layouts[k], source[k - m]
            rest = tuple((a, b, 1) for a, b in source[k - m + 1 :])
            base, s = lay.anchor_offset, lay.stride
            first = max(0, -(-(c0 - base) // s))
            stop = min(lay.out, (c1 - 1 - base) // s + 1)
            if first >= stop:  # no anchor in this piece
                return _Input(offset, ranges + ((c0, c1, 1),) + rest)
            p0, p1 = base + first * s, base + (stop - 1) * s + 1
            inner = split(k + 1, ranges + ((p0, p1, s),), outputs + ((first, stop),))
            if s > 1:
                outer = _Input(offset, ranges + ((c0, c1, 1),) + rest)
                return _Interleaved(k, outer, p0 - c0, p1 - c0, s, inner)
            parts: list[_Piece] = []
            if c0 < p0:
                parts.append(_Input(offset, ranges + ((c0, p0, 1),) + rest))
            parts.append(inner)
            if p1 < c1:
                parts.append(_Input(offset, ranges + ((p1, c1, 1),) + rest))
            return parts[0] if len(parts) == 1 else _Joined(k, tuple(parts))

        return split(m, (), ())

    def _rows(
        self, key: int, box: Box, taps: Taps | None
    ) -> dict[tuple[int, ...], _Piece]:
        every = set(np.ndindex(*(lay.kernel for lay in self.scanned)))
        read = every if taps is None else {tap[: self.m] for _, tap in taps}
        source = self.problem.source_range(box)[self.m :]
        return {
            offset: self._row(key, offset, source) for offset in self._offsets(read)
        }

    def prepare(self, key: int, box: Box, taps: Taps | None) -> None:
        """Build the pieces of the padded input that `box`'s rows read, for
        the rows of steps of `key` (outside the scans)."""
        m = self.m
        steps = self.steps[self.keys == key]
        first = steps.min(0) * np.asarray([lay.stride for lay in self.scanned], int)
        last = steps.max(0) * np.asarray([lay.stride for lay in self.scanned], int)
        for row in self._rows(key, box, taps).values():
            for piece in _inputs(row):
                if (key, piece) in self.strips:
                    continue
                lead = [
                    (int(a) + o, int(b) + o + 1)
                    for a, b, o in zip(first, last, piece.offset)
                ]
                box_ = lead + [(a, b) for a, b, _ in piece.ranges]
                strides = [1] * m + [step for _, _, step in piece.ranges]
                limits = [b - a for a, b in box_]
                strips = [
                    lax.slice(field, [0] * len(box_), limits, strides)
                    for field in self.problem.padded(box_)
                ]
                self.strips[key, piece] = ([a for a, _ in lead], strips)

    def start(self) -> Work:
        ranges = _anchor_ranges(self.problem.layouts)
        limits = [b - a for a, b in ranges]
        strides = [lay.stride for lay in self.problem.layouts]
        return tuple(
            lax.slice(field, [0] * len(ranges), limits, strides)
            for field in self.problem.padded(ranges)
        )

    def sources(
        self, work: Work, lead: Lead, key: int, box: Box, taps: Taps | None
    ) -> list[Array]:
        m, ndim = self.m, len(self.problem.layouts)
        ranges = self.problem.source_range(box)
        spans = tuple(b - a for a, b in ranges[:m])
        widths = tuple(b - a for a, b in ranges[m:])
        rows = self._rows(key, box, taps)

        def build(piece: _Piece, f: int) -> Array:
            if isinstance(piece, _Results):
                return self._results(work, f, lead, piece)
            if isinstance(piece, _Input):
                first, strips = self.strips[key, piece]
                starts = [
                    i * lay.stride + o - a
                    for i, lay, o, a in zip(lead, self.scanned, piece.offset, first)
                ]
                sizes = (1,) * m + strips[f].shape[m:]
                starts += [0] * (ndim - m)
                return lax.dynamic_slice(strips[f], starts, sizes)
            if isinstance(piece, _Joined):
                parts = [build(part, f) for part in piece.parts]
                return jnp.concatenate(parts, piece.axis)
            index = [slice(None)] * ndim
            index[piece.axis] = slice(piece.start, piece.stop, piece.step)
            outer = build(piece.outer, f)
            return outer.at[tuple(index)].set(build(piece.inner, f))

        def block(f: int) -> Array:
            # Rows no tap reads are never sliced: zeros keep the shape.
            unread = jnp.zeros((1,) * m + widths, work[f].dtype)
            grid = np.empty(spans, object)
            for offset in np.ndindex(*spans):
                grid[offset] = build(rows[offset], f) if offset in rows else unread
            return _join(grid, m)

        return [block(f) for f in range(len(work))]

    def write(self, work: Work, lead: Lead, row: Work) -> Work:
        starts = list(lead) + [0] * (len(self.problem.layouts) - self.m)
        return tuple(
            lax.dynamic_update_slice(field, value, starts)
            for field, value in zip(work, row)
        )

    def result(self, work: Work, rows: Work) -> list[Array]:
        del rows  # written into the working fields
        return list(work)


class _Recent(_Anchors):
    """The row sweep along one axis, keeping only the last `depth` rows of
    results its taps read: a step's row is the scan's output, stacked row
    after row, instead of written into the whole result. Under `vmap` the
    whole result would gain a leading batch axis, and every step write its
    row as `batch` separate pieces (a scatter), where the stacked rows stay
    one contiguous block per step. Rows the sequential order has not written
    yet (the step's own and those after it in the sweep's order) hold the
    input: they are read from the padded input."""

    emits_rows = True

    def __init__(
        self,
        problem: Problem,
        table: Table,
        m: int,
        steps: np.ndarray,
        reverse: bool,
    ):
        self.reverse = reverse  # read by `_holds` in `super().__init__`
        super().__init__(problem, table, m, steps)
        behind = [self._behind(delta) for delta in self.read.values() if delta]
        self.depth = max([*behind, 1])  # at least one row, read or not

    def _behind(self, delta: tuple[int, ...]) -> int:
        """How many steps before the step's (in the sweep's order) the row of
        outputs `delta` away was written (not positive: not yet written)."""
        return delta[0] if self.reverse else -delta[0]

    def _holds(self, delta: tuple[int, ...]) -> bool:
        return self._behind(delta) > 0

    def _results(self, work: Work, f: int, lead: Lead, piece: _Results) -> Array:
        del lead  # the rows behind the step's are at fixed places, the newest last
        at = self.depth - self._behind(piece.delta)
        starts = [at] + [a for a, _ in piece.outputs]
        limits = [at + 1] + [b for _, b in piece.outputs]
        return lax.slice(work[f], starts, limits)

    def start(self) -> Work:
        trail = out_shape(self.problem.layouts)[1:]
        return tuple(
            jnp.zeros((self.depth, *trail), field.dtype)
            for field in self.problem.fields.arrays
        )

    def write(self, work: Work, lead: Lead, row: Work) -> Work:
        del lead  # the newest row goes last (`_results`)
        if self.depth == 1:
            return row
        return tuple(
            jnp.concatenate([field[1:], value]) for field, value in zip(work, row)
        )

    def result(self, work: Work, rows: Work) -> list[Array]:
        del work  # the last rows only
        shape = out_shape(self.problem.layouts)
        return [lax.reshape(field, shape) for field in rows]


def _join(grid: np.ndarray, m: int) -> Array:
    """Concatenate an object array of blocks along its first `m` axes."""
    if grid.ndim == 0:
        return grid.item()
    parts = [_join(grid[i, ...], m) for i in range(len(grid))]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, m - grid.ndim)
