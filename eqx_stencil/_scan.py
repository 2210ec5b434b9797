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
(Gauss-Seidel), each step reading its windows with `dynamic_slice` and writing
its results with `dynamic_update_slice`: O(block) work per step.
"""

from __future__ import annotations

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
from ._problem import Problem, Table
from ._regions import MAX_BOXES, Box, Plan, decompose


Work = tuple[Array, ...]  # the working padded fields

# Above this many runs of alike steps, one scan switches between the patterns.
MAX_SCAN_SEGMENTS = 8


def _deltas(table: Table, layouts: Sequence[DimLayout]) -> list[tuple[int, ...]]:
    """Output offsets of the cells whose updated values the taps may read."""
    kernel = tuple(layout.kernel for layout in layouts)
    every = tuple(np.ndindex(*kernel))
    deltas = set()
    for taps in table.taps.values():
        for tap in every if taps is None else (tap for _, tap in taps):
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


def sweep(problem: Problem, table: Table, reverse: bool) -> PyTree[Array]:
    """The sequential sweep of `table`'s functions over `problem`. With several
    fields, each function returns one value per field (the fields' structure)
    and every field is written back."""
    layouts = problem.layouts
    ndim = len(layouts)
    m = scan_axes(_deltas(table, layouts), ndim, reverse)
    shape = out_shape(layouts)
    lead, trail = shape[:m], shape[m:]
    padded_range = [(0, lay.size + lay.lo + lay.hi) for lay in layouts]
    work = tuple(problem.padded(padded_range))
    owners = _full_owners(table.plan).reshape(math.prod(lead), *trail)
    patterns: dict[bytes, int] = {}
    rows: list[np.ndarray] = []
    pattern_ids = []
    for row in map(np.asarray, owners):  # steps owned alike share a branch
        if row.tobytes() not in patterns:
            patterns[row.tobytes()] = len(rows)
            rows.append(row)
        pattern_ids.append(patterns[row.tobytes()])
    blocks = [ft.partial(_block, problem, table, m, row) for row in rows]

    def step(work: Work, xs: tuple[Array, Array], block: Callable) -> tuple:
        counter, pattern = xs
        lead_index = [counter // math.prod(lead[d + 1 :]) % lead[d] for d in range(m)]
        values = block(work, lead_index, pattern)
        return _write(work, values, lead_index, layouts, m), None

    def switched(work: Work, lead_index: Sequence[Array], pattern: Array) -> Work:
        branches = [lambda w, i, b=b: b(w, i) for b in blocks]
        return lax.switch(pattern, branches, work, lead_index)

    # JAX's default int (int64 under x64), the type of the Python ints they
    # meet in the window and write indices.
    counters = np.arange(math.prod(lead), dtype=jnp.int_)
    pattern_ids = np.asarray(pattern_ids, jnp.int_)
    # Runs of steps owned alike each get a scan of their own; with many runs,
    # one scan switches between the patterns.
    changes = np.flatnonzero(np.diff(pattern_ids)) + 1
    runs = np.split(np.arange(len(counters)), changes)
    segmented = len(runs) <= MAX_SCAN_SEGMENTS
    for run in (runs if segmented else [counters])[:: -1 if reverse else 1]:
        fixed = blocks[pattern_ids[run[0]]]
        block = (lambda w, i, p, b=fixed: b(w, i)) if segmented else switched
        xs = (jnp.asarray(counters[run]), jnp.asarray(pattern_ids[run]))
        body = ft.partial(step, block=block)
        if m == 0:
            work, _ = body(work, (xs[0][0], xs[1][0]))
        else:
            work, _ = lax.scan(body, work, xs, reverse=reverse)
    # Each anchor is written exactly once: the results are the final working
    # array read at the anchors.
    starts = [lay.anchor * lay.dilation for lay in layouts]
    limits = [a + (n - 1) * lay.stride + 1 for a, n, lay in zip(starts, shape, layouts)]
    strides = [lay.stride for lay in layouts]
    results = [lax.slice(field, starts, limits, strides) for field in work]
    return problem.fields.structure.unflatten(results)


def _block(
    problem: Problem,
    table: Table,
    m: int,
    pattern: np.ndarray,
    work: Work,
    lead_index: Sequence[Array],
) -> Work:
    """The results of one step (one block per field): the trailing block at
    `lead_index`, its positions owned as `pattern` says."""
    layouts = problem.layouts
    trail = pattern.shape
    plan = Plan(
        edges=((0, 1),) * m + tuple(tuple(range(n + 1)) for n in trail),
        owners=pattern.reshape((1,) * m + trail),
        interior=np.zeros((1,) * m + trail, dtype=bool),
    )
    tiled = decompose(plan)
    if tiled is None:
        raise ValueError(
            f"kscan: the regions cut one scan step into more than {MAX_BOXES} "
            "pieces; use fewer, larger regions."
        )
    tiles, tiling = tiled
    values = []
    for box, owner in tiles:
        starts = [i * lay.stride for i, lay in zip(lead_index, layouts[:m])] + [
            start * lay.stride for (start, _), lay in zip(box[m:], layouts[m:])
        ]
        sizes = [lay.span for lay in layouts[:m]] + [
            (stop - start - 1) * lay.stride + lay.span
            for (start, stop), lay in zip(box[m:], layouts[m:])
        ]
        sources = [lax.dynamic_slice(field, starts, sizes) for field in work]
        value = evaluate_on(
            problem, table.funcs[owner], sources, box, table.taps[owner]
        )
        values.append(_written_back(value, box, problem, table.names[owner]))
    boxes = [box for box, _ in tiles]
    check_outputs(values, boxes, [table.names[owner] for _, owner in tiles])
    blocks = tile_together((1,) * m + trail, tiling, boxes, values)
    return tuple(jnp.asarray(block, field.dtype) for block, field in zip(blocks, work))


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


def _write(
    work: Work,
    blocks: Work,
    lead_index: Sequence[Array],
    layouts: Sequence[DimLayout],
    m: int,
) -> Work:
    """Write a step's results at their anchors in the working fields."""
    return tuple(
        _write_field(field, block, lead_index, layouts, m)
        for field, block in zip(work, blocks)
    )


def _write_field(
    work: Array,
    block: Array,
    lead_index: Sequence[Array],
    layouts: Sequence[DimLayout],
    m: int,
) -> Array:
    anchors = [lay.anchor * lay.dilation for lay in layouts]
    starts = [i * lay.stride + a for i, lay, a in zip(lead_index, layouts, anchors)]
    starts += anchors[m:]
    trailing = list(zip(block.shape[m:], layouts[m:]))
    if all(lay.stride == 1 for _, lay in trailing):
        return lax.dynamic_update_slice(work, block, starts)
    sizes = [1] * m + [(n - 1) * lay.stride + 1 for n, lay in trailing]
    current = lax.dynamic_slice(work, starts, sizes)
    index = (slice(None),) * m
    index += tuple(slice(None, None, lay.stride) for _, lay in trailing)
    return lax.dynamic_update_slice(work, current.at[index].set(block), starts)
