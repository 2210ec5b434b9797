"""Stencils on sharded arrays: finding the mesh and running `jax.shard_map`.

A stencil runs sharded when its input's type carries a `NamedSharding` on
Explicit mesh axes, or when it was built with `sharding=`. Each shard then
computes its own block of the output with the single-device lowering, on a
local problem (`HaloProblem`) whose padding along sharded dims is the halo its
neighbours send (`_halo.py`). That needs every shard's outputs to read from its
own block plus a halo: the output must split like the input, with the output
block times the stride equal to the input block.

Regions are in global coordinates: each shard gets the region table restricted
to its own outputs, so a shard owning none of a region's positions does no
work for it. Shards whose restricted tables agree share one program; with
several, `lax.switch` on the shard's mesh position picks its program.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from jaxtyping import Array, PyTree

from ._geometry import DimLayout, out_shape
from ._halo import HaloProblem, ShardedDim, exchange
from ._lower import evaluate
from ._problem import Fields, Problem, Table
from ._regions import Box, Plan, _outer_and, decompose
from ._scan import _deltas, scan_axes


def check_sharding(sharding: Any) -> NamedSharding | None:
    """Validate the `sharding=` argument of a stencil."""
    if sharding is not None and not isinstance(sharding, NamedSharding):
        raise TypeError(
            "sharding must be a jax.sharding.NamedSharding (the mesh and "
            f"PartitionSpec to run on) or None; got {sharding!r} of type "
            f"{type(sharding).__name__}."
        )
    return sharding


# Per array dim, the mesh axes it is split over (`None`: not split).
Entries = tuple[tuple[str, ...] | None, ...]


@dataclasses.dataclass(frozen=True)
class Sharded:
    """Where a stencil runs: a mesh and how the input's dims are split over it.
    `constrain` is the stencil's own `sharding=`, the input is put on it."""

    mesh: Any  # jax.sharding.Mesh or AbstractMesh
    entries: Entries
    constrain: NamedSharding | None

    @property
    def spec(self) -> PartitionSpec:
        return PartitionSpec(*self.entries)

    def describe(self) -> str:
        return f"spec {self.spec} on mesh axes {dict(self.mesh.shape)}"


def _entries(spec: PartitionSpec, ndim: int, where: str) -> Entries:
    if len(spec) > ndim:
        raise ValueError(
            f"{where} has {len(spec)} entries ({spec}) but the stencil's input has "
            f"rank {ndim}; give at most one entry per dim."
        )
    entries: list[tuple[str, ...] | None] = []
    for entry in (*spec, *(None,) * (ndim - len(spec))):
        if entry is None:
            entries.append(None)
        elif isinstance(entry, str):
            entries.append((entry,))
        elif isinstance(entry, tuple) and all(isinstance(e, str) for e in entry):
            entries.append(entry if entry else None)
        else:
            raise ValueError(
                f"{where}: each PartitionSpec entry must be None, a mesh axis name "
                f"or a tuple of names; got {entry!r} in {spec}."
            )
    return tuple(entries)


@dataclasses.dataclass(frozen=True)
class Application:
    """One sharded stencil application, as recorded for deep halos: its
    sharded dims (with the halo depths of one application), whether it maps
    the input's grid onto itself (stride 1, same shape) and runs one function
    everywhere (no regions or offset box, so it commutes with shifts), and its
    boundary mode."""

    sharded: Sharded
    dims: tuple[ShardedDim, ...]
    uniform: bool
    boundary: str


_RECORDED: contextvars.ContextVar[list[Application] | None] = contextvars.ContextVar(
    "eqx_stencil_recorded", default=None
)
_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "eqx_stencil_local", default=False
)


@contextlib.contextmanager
def recording() -> Iterator[list[Application]]:
    """Record the sharded stencil applications traced within."""
    found: list[Application] = []
    token = _RECORDED.set(found)
    try:
        yield found
    finally:
        _RECORDED.reset(token)


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Within, stencils run on the local block: already inside a shard_map."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def find_sharding(sharding: NamedSharding | None, fields: Fields) -> Sharded | None:
    """How to run on `fields`: on `sharding` if given, else on the Explicit
    mesh axes their types carry; `None`: the single-device path."""
    if _LOCAL.get():
        return None
    ndim = len(fields.shape)
    if sharding is not None:
        entries = _entries(sharding.spec, ndim, "sharding")
        return Sharded(sharding.mesh, entries, sharding)
    found: list[tuple[Any, Entries]] = []
    for array in fields.arrays:
        typed = jax.typeof(array).sharding
        mesh = getattr(typed, "mesh", None)
        if not isinstance(typed, NamedSharding) or mesh is None or mesh.empty:
            found.append((None, (None,) * ndim))
            continue
        explicit = {
            name
            for name, kind in zip(mesh.axis_names, mesh.axis_types)
            if kind == AxisType.Explicit
        }
        entries = _entries(typed.spec, ndim, "the input's sharding")
        entries = tuple(
            e if e is not None and set(e) <= explicit else None for e in entries
        )
        found.append((mesh, entries) if any(entries) else (None, (None,) * ndim))
    if len(set(found)) > 1:
        shown = ", ".join(
            f"field {i}: {'unsharded' if m is None else PartitionSpec(*e)}"
            for i, (m, e) in enumerate(found)
        )
        raise ValueError(
            "every field of a stencil's input must be sharded alike (same mesh and "
            f"PartitionSpec); got {shown}. Put them on one sharding with "
            "jax.sharding.reshard."
        )
    mesh, entries = found[0]
    return None if mesh is None else Sharded(mesh, entries, None)


def _permute_order(mesh: Any, names: tuple[str, ...]) -> tuple[int, ...]:
    """For each block along a dim split over `names` (in the spec's order),
    its index in `lax.ppermute` over `names` (in the mesh's order)."""
    sizes = [mesh.shape[name] for name in names]
    ranked = sorted(range(len(names)), key=lambda i: mesh.axis_names.index(names[i]))
    order = []
    for block in range(math.prod(sizes)):
        index = np.unravel_index(block, sizes)
        ranked_index = tuple(int(index[i]) for i in ranked)
        order.append(
            int(np.ravel_multi_index(ranked_index, [sizes[i] for i in ranked]))
        )
    return tuple(order)


def _check_split(
    sharded: Sharded, layouts: Sequence[DimLayout], boundary: str
) -> tuple[tuple[ShardedDim, ...], tuple[DimLayout, ...]]:
    """The sharded dims with their halo depths, and the shard's local layouts."""
    shape = tuple(layout.size for layout in layouts)
    dims: list[ShardedDim] = []
    local = list(layouts)
    for axis, (names, layout) in enumerate(zip(sharded.entries, layouts)):
        if names is None:
            continue
        count = math.prod(sharded.mesh.shape[name] for name in names)
        if count == 1:
            continue
        size, out = layout.size, layout.out
        if size % count or out % count or out // count * layout.stride != size // count:
            raise ValueError(
                f"cannot split dim {axis} over mesh axes {names} ({count} shards): "
                f"input shape {shape}, output shape {out_shape(layouts)}, "
                f"{sharded.describe()}. Each shard computes its outputs from its "
                "own block, which needs input and output lengths divisible by the "
                "number of shards and (output block) x stride == input block; "
                "change the shape, padding or strides, or do not shard this dim."
            )
        block = size // count
        lo, hi = layout.lo, layout.span - layout.stride - layout.lo
        reach = max(lo, hi)
        if reach > block or (boundary == "reflect" and reach == block):
            raise ValueError(
                f"halo wider than a shard: dim {axis} is split over mesh axes {names} "
                f"into shards of {block}, but the kernel reaches {max(lo, 0)} before "
                f"and {max(hi, 0)} after a block (kernel {layout.kernel}, dilation "
                f"{layout.dilation}, padding ({layout.lo}, {layout.hi})"
                + (", and reflect needs one row more" if boundary == "reflect" else "")
                + f"); {sharded.describe()}. Use fewer shards along this dim."
            )
        order = _permute_order(sharded.mesh, names)
        dims.append(ShardedDim(axis, names, count, max(lo, 0), max(hi, 0), order))
        local[axis] = dataclasses.replace(layout, size=block, hi=hi)
    return tuple(dims), tuple(local)


def _check_scan(
    table: Table,
    layouts: Sequence[DimLayout],
    dims: Sequence[ShardedDim],
    reverse: bool,
) -> None:
    """kscan: a sharded dim must be updated at once, and no step may read a
    cell a neighbouring shard updated."""
    deltas = _deltas(table, layouts)
    swept = scan_axes(deltas, len(layouts), reverse)
    for dim in dims:
        if dim.axis < swept:
            raise ValueError(
                f"kscan sweeps dim {dim.axis} sequentially (its windows read results "
                f"of earlier positions along it), so it cannot be split over mesh "
                f"axes {dim.names}: shard a dim the scan updates at once, or leave "
                f"dim {dim.axis} unsharded (PartitionSpec entry None)."
            )
        for delta in deltas:
            lead = delta[:swept]
            updated = lead > (0,) * swept if reverse else lead < (0,) * swept
            if updated and delta[dim.axis] != 0:
                raise ValueError(
                    f"kscan split over mesh axes {dim.names} along dim {dim.axis}: "
                    f"each step reads cells (offset {delta}) that the neighbouring "
                    "shard updated in an earlier step, which would need a halo "
                    f"exchange per step. Leave dim {dim.axis} unsharded, or write "
                    "the time steps with es.iterate over a kmap."
                )


def _local_plan(
    plan: Plan, layouts: Sequence[DimLayout], offsets: Sequence[int]
) -> Plan:
    """`plan` restricted to the outputs from `offsets` on, with the local
    interior of `layouts`."""
    edges, cells, starts = [], [], []
    for edge, layout, offset in zip(plan.edges, layouts, offsets):
        a, b = layout.interior
        cut = {0, layout.out, a, b}
        cut |= {e - offset for e in edge if 0 < e - offset < layout.out}
        local = tuple(sorted(cut))
        start = np.asarray(local[:-1])
        edges.append(local)
        starts.append(start)
        cells.append(np.searchsorted(edge, start + offset, side="right") - 1)
    interior = _outer_and(
        [
            (s >= lay.interior[0]) & (s < lay.interior[1])
            for s, lay in zip(starts, layouts)
        ]
    )
    return Plan(tuple(edges), plan.owners[np.ix_(*cells)], interior)


def _shard_tables(
    table: Table, layouts: Sequence[DimLayout], dims: Sequence[ShardedDim]
) -> tuple[list[Table], np.ndarray]:
    """The distinct local tables, and which one each shard (indexed by its
    position along the sharded dims) runs."""
    tables: list[Table] = []
    keys: dict[tuple, int] = {}
    which = np.zeros([dim.count for dim in dims], np.int32)
    for position in np.ndindex(*which.shape):
        offsets = [0] * len(layouts)
        for dim, i in zip(dims, position):
            offsets[dim.axis] = i * layouts[dim.axis].out
        plan = _local_plan(table.plan, layouts, offsets)
        key = (plan.edges, plan.owners.tobytes(), plan.interior.tobytes())
        if key not in keys:
            owners = [int(o) for o in np.unique(plan.owners)]
            keys[key] = len(tables)
            tables.append(
                Table(
                    plan=plan,
                    funcs={o: table.funcs[o] for o in owners},
                    taps={o: table.taps[o] for o in owners},
                    # Traced outside the `shard_map`, its equations would
                    # bind in the global mesh's context: each shard runs the
                    # functions themselves.
                    programs=dict.fromkeys(owners),
                    names={o: table.names[o] for o in owners},
                )
            )
        which[position] = keys[key]
    return tables, which


def _shared_interior(
    tables: Sequence[Table], layouts: Sequence[DimLayout]
) -> tuple[Box, int] | None:
    """The local interior box and its owner, when every shard's tiling has it
    as one tile of the same function (regions only near the shards' edges,
    e.g. boundary conditions): it is then computed before the shards' programs
    part, from the block alone."""
    box = tuple(layout.interior for layout in layouts)
    if any(a >= b for a, b in box):
        return None
    owners = set()
    for table in tables:
        tiled = decompose(table.plan)
        found = [] if tiled is None else [o for b, o in tiled[0] if b == box]
        if len(found) != 1:
            return None
        owners.add(found[0])
    return (box, owners.pop()) if len(owners) == 1 else None


def _constrain(array: Array, sharding: NamedSharding) -> Array:
    explicit = any(kind == AxisType.Explicit for kind in sharding.mesh.axis_types)
    if explicit:
        return jax.sharding.reshard(array, sharding)
    return lax.with_sharding_constraint(array, sharding)


def run_sharded(
    sharded: Sharded,
    problem: Problem,
    table: Table,
    run: Callable[[Problem, Table], PyTree[Array]],
    reverse: bool | None = None,
) -> PyTree[Array]:
    """Run a resolved stencil as a `jax.shard_map` over `sharded`'s mesh: each
    shard applies `run` (the kind's map or sweep) to its local problem.
    `reverse`: `None` for a map, else the sweep's direction."""
    dims, layouts = _check_split(sharded, problem.layouts, problem.boundary)
    if reverse is not None:
        _check_scan(table, problem.layouts, dims, reverse)
    tables, which = _shard_tables(table, layouts, dims)
    recorded = _RECORDED.get()
    if recorded is not None:
        same_grid = all(
            lay.stride == 1 and lay.out == lay.size for lay in problem.layouts
        )
        one_func = set(np.unique(table.plan.owners).tolist()) == {0}
        recorded.append(
            Application(sharded, dims, same_grid and one_func, problem.boundary)
        )
    structure = problem.fields.structure
    arrays = problem.fields.arrays
    if sharded.constrain is not None:
        arrays = tuple(_constrain(array, sharded.constrain) for array in arrays)
    dynamic, static = eqx.partition((problem.args, problem.kwargs), eqx.is_array)
    boundary, cval = problem.boundary, problem.cval

    def body(blocks: tuple[Array, ...], dynamic: Any) -> PyTree[Array]:
        args, kwargs = eqx.combine(dynamic, static)
        given = {f.name: getattr(problem, f.name) for f in dataclasses.fields(problem)}
        local = HaloProblem(
            **{
                **given,
                "fields": Fields(blocks, structure),
                "layouts": layouts,
                "args": args,
                "kwargs": kwargs,
            },
            halos=exchange(blocks, dims, boundary, cval),
            dims=dims,
        )
        if len(tables) == 1:
            return run(local, tables[0])
        shared = _shared_interior(tables, layouts)
        if shared is not None:  # outside the switch, so it needs no halo
            box, owner = shared
            first = tables[0]
            func, taps = first.funcs[owner], first.taps[owner]
            value = evaluate(local, func, box, taps, first.programs[owner])
            local = dataclasses.replace(local, known=(box, func, value))
        position = tuple(lax.axis_index(dim.names) for dim in dims)
        branches = [lambda t=t: run(local, t) for t in tables]
        return lax.switch(jnp.asarray(which)[position], branches)

    spec = sharded.spec
    mapped = jax.shard_map(
        body,
        mesh=sharded.mesh,
        in_specs=(spec, PartitionSpec()),
        out_specs=spec,
        # The unrolled lowering binds primitives directly, bypassing the
        # automatic `pvary` of varying and replicated operands.
        check_vma=False,
    )
    return mapped(arrays, dynamic)
