"""Halo exchange: a shard's block extended by its neighbours' edge rows.

Inside `jax.shard_map` each shard holds one block of the input. Along every
sharded dim it receives, with one `lax.ppermute` per direction, the `lo` rows
before its block (the previous shard's last rows) and the `hi` rows after it
(the next shard's first rows). At the global edges the rows come from the
boundary mode instead: a ring permutation for `"wrap"`, otherwise computed
locally from the block and selected on the edge shards by `lax.axis_index`.

The sharded dims are exchanged in turn, each on the block already extended by
the dims before it, so the corners travel with the second exchange and a 2-D
mesh needs four messages. The extended block is never materialised: a
`HaloProblem` is the local `Problem` whose padding of sharded dims reads the
halos, so the lowering's interior box reads the block alone and only the
boundary strips read the halos.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, PyTree

from ._boundary import padded_box
from ._geometry import Cval, DimLayout
from ._problem import Problem
from ._regions import Box


@dataclasses.dataclass(frozen=True)
class ShardedDim:
    """An array dim split over mesh axes `names` into `count` blocks; each
    shard reads `lo` rows before its block and `hi` rows after it. `order[i]`
    is block `i`'s index in `lax.ppermute` over `names` (which counts the
    names in the mesh's order, whatever their order in the spec)."""

    axis: int
    names: tuple[str, ...]
    count: int
    lo: int
    hi: int
    order: tuple[int, ...]


# Per sharded dim (in exchange order), the rows before and after the block.
Halos = tuple[tuple[Array, Array], ...]


def _flat(size: int) -> DimLayout:
    """The layout of a dim read as is (no padding, one tap)."""
    return DimLayout(size=size, kernel=1, stride=1, dilation=1, lo=0, hi=0)


def _along(shape: Sequence[int], axis: int, span: tuple[int, int]) -> list:
    """The box covering `shape`, but `span` along `axis`."""
    return _replace([(0, n) for n in shape], axis, span)


def extended_shape(
    block: Array, dims: Sequence[ShardedDim], level: int
) -> tuple[int, ...]:
    """Shape of the block extended along the first `level` sharded dims."""
    shape = list(block.shape)
    for dim in dims[:level]:
        shape[dim.axis] += dim.lo + dim.hi
    return tuple(shape)


def piece(
    block: Array,
    halos: Halos,
    dims: Sequence[ShardedDim],
    level: int,
    box: Sequence[tuple[int, int]],
) -> Array:
    """`box` of the block extended along the first `level` sharded dims (box
    coordinates: extended along those dims, block coordinates along others)."""
    if level == 0:
        return lax.slice(block, [a for a, _ in box], [b for _, b in box])
    dim = dims[level - 1]
    axis, (start, stop) = dim.axis, box[dim.axis]
    inner = extended_shape(block, dims, level - 1)[axis]
    before, after = halos[level - 1]
    parts = []
    if start < dim.lo:
        span = (start, min(stop, dim.lo))
        parts.append(piece(before, (), (), 0, _replace(box, axis, span)))
    mid = (max(start, dim.lo) - dim.lo, min(stop, dim.lo + inner) - dim.lo)
    if mid[0] < mid[1]:
        parts.append(piece(block, halos, dims, level - 1, _replace(box, axis, mid)))
    if stop > dim.lo + inner:
        span = (max(start, dim.lo + inner) - dim.lo - inner, stop - dim.lo - inner)
        parts.append(piece(after, (), (), 0, _replace(box, axis, span)))
    return parts[0] if len(parts) == 1 else lax.concatenate(parts, axis)


def _replace(box: Sequence[tuple[int, int]], axis: int, span: tuple[int, int]) -> list:
    """`box` with `span` along `axis`."""
    box = list(box)
    box[axis] = span
    return box


def _edge_rows(
    rows: Array, axis: int, lo: int, hi: int, boundary: str, cval: Cval
) -> Array:
    """The `lo` rows before (or `hi` rows after) `rows` in `boundary` mode."""
    layouts = [_flat(n) for n in rows.shape]
    size = rows.shape[axis]
    layouts[axis] = DimLayout(size=size, kernel=1, stride=1, dilation=1, lo=lo, hi=hi)
    span = (0, lo) if lo else (size, size + hi)
    return padded_box(rows, layouts, _along(rows.shape, axis, span), boundary, cval)


def _permute(arrays: list[Array], names: tuple[str, ...], perm: list) -> list[Array]:
    """`lax.ppermute` of several arrays, one message per dtype."""
    out: list[Array] = list(arrays)
    dtypes = {array.dtype for array in arrays}
    for dtype in sorted(dtypes, key=str):
        group = [i for i, array in enumerate(arrays) if array.dtype == dtype]
        sent = lax.ppermute(jnp.stack([arrays[i] for i in group]), names, perm)
        for j, i in enumerate(group):
            out[i] = sent[j]
    return out


def exchange(
    blocks: Sequence[Array], dims: Sequence[ShardedDim], boundary: str, cval: Cval
) -> tuple[Halos, ...]:
    """Every sharded dim's halos of every field's block, exchanged in turn:
    per dim and direction one message carries every field (of one dtype)."""
    halos: list[list[tuple[Array, Array]]] = [[] for _ in blocks]
    ring = boundary == "wrap"
    for level, dim in enumerate(dims):
        axis, count = dim.axis, dim.count
        n = blocks[0].shape[axis]

        def rows(
            f: int, span: tuple[int, int], level: int = level, axis: int = axis
        ) -> Array:
            block = blocks[f]
            box = _along(extended_shape(block, dims, level), axis, span)
            return piece(block, tuple(halos[f]), dims, level, box)

        fields = range(len(blocks))
        before = [rows(f, (n - dim.lo, n)) for f in fields]
        after = [rows(f, (0, dim.hi)) for f in fields]
        forward = [(j, j + 1) for j in range(count - 1)] + [(count - 1, 0)] * ring
        forward = [(dim.order[a], dim.order[b]) for a, b in forward]
        backward = [(b, a) for a, b in forward]
        if dim.lo:
            before = _permute(before, dim.names, forward)
        if dim.hi:
            after = _permute(after, dim.names, backward)
        if not ring:
            index = lax.axis_index(dim.names)
            for f in fields:
                if dim.lo:
                    edge = rows(f, (0, min(n, dim.lo + 1)))
                    fill = _edge_rows(edge, axis, dim.lo, 0, boundary, cval)
                    before[f] = jnp.where(index == 0, fill, before[f])
                if dim.hi:
                    edge = rows(f, (n - min(n, dim.hi + 1), n))
                    fill = _edge_rows(edge, axis, 0, dim.hi, boundary, cval)
                    after[f] = jnp.where(index == count - 1, fill, after[f])
        for f in fields:
            halos[f].append((before[f], after[f]))
    return tuple(tuple(h) for h in halos)


@dataclasses.dataclass(frozen=True)
class HaloProblem(Problem):
    """A shard's local problem: `layouts` are the shard's (sharded dims: the
    block's size, with `lo`/`hi` the halo depths, possibly negative: a crop),
    and the padding of sharded dims is read from `halos` (one per field)."""

    halos: tuple[Halos, ...] = ()
    dims: tuple[ShardedDim, ...] = ()
    # A box every shard computes alike, computed once: (box, function, value).
    known: tuple[Box, Callable, PyTree[Array]] | None = None

    @property
    def fuse_tiles(self) -> bool:
        """Strips written in place, so that XLA computes the interior during
        the exchange; but one block per dim (a 1-device mesh) has no
        neighbour: its halos are the boundary's padding, and nothing overlaps."""
        return all(dim.count == 1 for dim in self.dims)

    def precomputed(self, box: Box, func: Callable) -> PyTree[Array] | None:
        if self.known is not None:
            known_box, known_func, value = self.known
            if known_box == box and known_func is func:
                return value
        return None

    def padded(self, box: Sequence[tuple[int, int]]) -> list[Array]:
        sharded = {dim.axis: dim for dim in self.dims}
        shape = extended_shape(self.fields.arrays[0], self.dims, len(self.dims))
        outer: list[tuple[int, int]] = []
        layouts: list[DimLayout] = []
        rest: list[tuple[int, int]] = []
        for axis, ((start, stop), layout) in enumerate(zip(box, self.layouts)):
            if axis in sharded:
                shift = sharded[axis].lo - layout.lo  # padded -> extended coordinate
                outer.append((start + shift, stop + shift))
                layouts.append(_flat(stop - start))
                rest.append((0, stop - start))
            else:
                outer.append((0, shape[axis]))
                layouts.append(layout)
                rest.append((start, stop))
        pieces = [
            piece(x, halos, self.dims, len(self.dims), outer)
            for x, halos in zip(self.fields.arrays, self.halos)
        ]
        return [padded_box(p, layouts, rest, self.boundary, self.cval) for p in pieces]
