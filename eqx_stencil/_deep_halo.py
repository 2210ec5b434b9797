"""Deep halos: one halo exchange for many time steps.

A step made of stencils reaching `r` rows changes a shard's block only through
the `r` rows around it, so `k` steps need only the `r*k` rows around it at the
start. `deep_halo_block` exchanges those once (`_halo.exchange`, one message
per sharded dim and direction), runs the `k` steps on the extended block with
no communication (the stencils run locally: their wrong values at the extended
block's edges travel `r` rows per step and never reach the block), and keeps
the block. Along a dim without `"wrap"`, a shard at the global edge extends its
block only inwards, so its stencils apply their boundary mode at the true edge
at every step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax import lax
from jaxtyping import Array

from ._halo import ShardedDim, exchange, piece
from ._problem import as_fields
from ._shard import Application, Sharded, find_sharding, local, recording


State = TypeVar("State")


def _reach(
    applications: Sequence[Application], sharded: Sharded, count: int
) -> tuple[ShardedDim, ...]:
    """The halo `count` steps need along each sharded dim: the step's reach
    (the sum over its stencil applications) times `count`."""
    if not applications:
        raise ValueError(
            "halo_every needs a step that applies stencils to the sharded state; "
            "the step applied none (or only to unsharded arrays)."
        )
    depth: dict[int, list[int]] = {}
    modes: dict[int, set[bool]] = {}
    for app in applications:
        if app.sharded.entries != sharded.entries or not app.uniform:
            raise ValueError(
                "halo_every needs every stencil of the step to map the state's "
                "sharded grid onto itself (stride 1, output shape = input shape, "
                "same sharding) with one function everywhere (no regions or "
                f"offset: those are in global coordinates); got a stencil on "
                f"{app.sharded.describe()} that does not. Use halo_every=None."
            )
        for dim in app.dims:
            lo, hi = depth.setdefault(dim.axis, [0, 0])
            depth[dim.axis] = [lo + dim.lo, hi + dim.hi]
            modes.setdefault(dim.axis, set()).add(app.boundary == "wrap")
    dims = []
    for dim in applications[0].dims:
        (lo, hi), wraps = depth[dim.axis], modes[dim.axis]
        if len(wraps) > 1:
            raise ValueError(
                f"halo_every: the step's stencils mix boundary='wrap' with other "
                f"modes along the sharded dim {dim.axis}; use one kind per dim."
            )
        dims.append(dataclasses.replace(dim, lo=lo * count, hi=hi * count))
    return tuple(dims)


def deep_halo_block(
    step: Callable[[State], State],
    steps: Callable[[State], State],
    example: State,
    count: int,
) -> Callable[[State], State]:
    """`steps` (`count` applications of `step`) with one deep halo exchange.

    `example` is a state of the right shapes, sharded on Explicit mesh axes.
    """
    leaves, structure = jtu.tree_flatten(example)
    fields = as_fields(tuple(leaves), "the state of es.iterate")
    sharded = find_sharding(None, fields)
    if sharded is None:
        raise ValueError(
            "halo_every needs a state sharded on Explicit mesh axes (under "
            "jax.set_mesh, put with jax.device_put(x, NamedSharding(mesh, spec))); "
            "got an unsharded state. Use halo_every=None."
        )
    with recording() as applications:
        jax.eval_shape(lambda state: step(state), example)  # traced anew
    dims = _reach(applications, sharded, count)
    shape = fields.shape
    wrap = any(app.boundary == "wrap" for app in applications)
    for dim in dims:
        block = shape[dim.axis] // dim.count
        if max(dim.lo, dim.hi) > block:
            raise ValueError(
                f"halo_every={count}: the step reaches {max(dim.lo, dim.hi) // count} "
                f"rows along dim {dim.axis}, so {count} steps need a halo of "
                f"{max(dim.lo, dim.hi)}, wider than a shard ({block} rows over mesh "
                f"axes {dim.names}); use a smaller halo_every."
            )
    # Per sharded dim, which sides a shard extends: all, unless at a global
    # edge without wrap. Shards extending alike share one program.
    sides = [
        [(wrap or i > 0, wrap or i < dim.count - 1) for i in range(dim.count)]
        for dim in dims
    ]
    kinds = sorted({tuple(s[i] for s, i in zip(sides, p)) for p in _positions(dims)})
    which = np.zeros([dim.count for dim in dims], np.int32)
    for position in _positions(dims):
        which[position] = kinds.index(tuple(s[i] for s, i in zip(sides, position)))

    def run(blocks: tuple[Array, ...], halos: tuple, kind: tuple) -> tuple[Array, ...]:
        extended = []
        for block, halo in zip(blocks, halos):
            box = [(0, n) for n in block.shape]
            for dim, (before, after) in zip(dims, kind):
                n = block.shape[dim.axis]
                box[dim.axis] = (dim.lo * (not before), dim.lo + n + dim.hi * after)
            extended.append(piece(block, halo, dims, len(dims), box))
        with local():
            state = steps(structure.unflatten(extended))
        out = []
        for block, new in zip(blocks, jtu.tree_leaves(state)):
            starts = [0] * block.ndim
            for dim, (before, _) in zip(dims, kind):
                starts[dim.axis] = dim.lo * before
            out.append(lax.slice(new, starts, np.add(starts, block.shape).tolist()))
        return tuple(out)

    def body(blocks: tuple[Array, ...]) -> tuple[Array, ...]:
        halos = exchange(blocks, dims, "wrap" if wrap else "constant", 0)
        if len(kinds) == 1:
            return run(blocks, halos, kinds[0])
        position = tuple(lax.axis_index(dim.names) for dim in dims)
        branches = [lambda b, h, k=k: run(b, h, k) for k in kinds]
        return lax.switch(jnp.asarray(which)[position], branches, blocks, halos)

    mapped = jax.shard_map(
        body,
        mesh=sharded.mesh,
        in_specs=(sharded.spec,),
        out_specs=sharded.spec,
        check_vma=False,
    )

    def block_steps(state: State) -> State:
        return structure.unflatten(mapped(tuple(jtu.tree_leaves(state))))

    return block_steps


def _positions(dims: Sequence[ShardedDim]) -> list[tuple[int, ...]]:
    return list(np.ndindex(*[dim.count for dim in dims]))
