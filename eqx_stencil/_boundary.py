"""Boundary modes without materialising the padded array.

`padded_box` returns a box of the *virtually* padded array (as `jnp.pad` with
the given mode would build it), assembled from slices of the input: runs of
consecutive indices become slices, reversed runs (reflect/symmetric) reversed
slices, repeated indices (edge) broadcasts, and constant fill a `full`. Only the
requested box is built, so a thin boundary strip costs O(strip), not O(array).
"""

from __future__ import annotations

import functools as ft
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from ._geometry import Cval, DimLayout


_FILL = -1


# A run of input indices: `(first_index, length, step)`, step in {1, -1, 0};
# `first_index` is `_FILL` for a run of fill.
Run = tuple[int, int, int]


@ft.lru_cache(maxsize=1024)
def _dim_runs(size: int, lo: int, start: int, stop: int, mode: str) -> tuple[Run, ...]:
    """The input indices of the padded coordinates `[start, stop)` of a dim of
    length `size` padded by `lo` before, as maximal runs (`_index_runs`).

    Only the padding's coordinates are looked up one by one (`np.pad` of the
    indices); the ones inside the input are one run, so the cost does not grow
    with the input."""
    first, last = start - lo, stop - lo  # input coordinates, may be out of range
    before, after = max(0, -first), max(0, last - size)
    if size == 0 and mode != "constant" and before + after:
        raise ValueError(
            f"boundary={mode!r} cannot fill the padding of a dim of length 0 (it "
            "repeats the input's values); use boundary='constant' or no padding."
        )
    if mode == "constant":
        table = np.pad(np.arange(size), (before, after), constant_values=_FILL)
    else:
        table = np.pad(np.arange(size), (before, after), mode=mode)  # pyright: ignore
    indices = table[first + before : first + before + stop - start].tolist()
    inside = max(0, min(last, size) - max(first, 0))  # coordinates in the input
    head = min(before, len(indices))
    segments = [(index, 1, 0) for index in indices[:head]]
    if inside:
        segments.append((max(first, 0), inside, 1))
    segments += [(index, 1, 0) for index in indices[head + inside :]]
    return tuple(_index_runs(segments))


def padding_source(size: int, index: int, mode: str) -> int | None:
    """The input index that `mode`'s padding repeats at input coordinate
    `index` of a dim of length `size` (outside `[0, size)`), or `None` where
    it is the constant fill."""
    ((first, _, _),) = _dim_runs(size, 0, index, index + 1, mode)
    return None if first == _FILL else first


def fill_value(cval: Cval, dtype: Any) -> np.ndarray:
    """`cval` in `dtype`, or a `ValueError` if it has no value there."""
    dtype = np.dtype(dtype)
    problem = _unrepresentable(cval, dtype)
    if problem is not None:
        raise ValueError(
            f"cval={cval!r} cannot fill an array of dtype {dtype.name}: it is "
            f"{problem}. Give a cval of the array's kind, or cast the array."
        )
    if isinstance(cval, complex) and not jnp.issubdtype(dtype, jnp.complexfloating):
        cval = cval.real
    return np.asarray(cval, dtype)


def _unrepresentable(cval: Cval, dtype: np.dtype) -> str | None:
    """Why `cval` has no value in `dtype`: a non-real number in a real dtype, a
    non-integer (or infinity, or NaN) in an integer dtype, a number out of the
    dtype's range, other than 0/1 in a bool dtype. Rounding to the nearest
    float is not an error (as `0.1` in float32)."""
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return None
    if isinstance(cval, complex):
        if cval.imag != 0:
            return "a complex number with a non-zero imaginary part"
        cval = cval.real
    if dtype == np.bool_:
        return None if cval in (0, 1) else "neither 0 nor 1 (False nor True)"
    if jnp.issubdtype(dtype, jnp.integer):
        if isinstance(cval, float) and not cval.is_integer():
            return "not a finite integer"
        info = jnp.iinfo(dtype)
        if not info.min <= int(cval) <= info.max:
            return f"outside the dtype's range {info.min}..{info.max}"
        return None
    with np.errstate(over="ignore"):
        cast = np.asarray(cval, dtype)
    if math.isfinite(cval) and not np.isfinite(cast):
        return "outside the dtype's range"
    return None


def _index_runs(segments: Sequence[Run]) -> list[Run]:
    """Split the indices of `segments` (runs, not necessarily maximal) into
    maximal runs, greedily from the first index."""
    runs: list[Run] = []

    def push(index: int) -> None:
        if runs:
            first, length, step = runs[-1]
            last = first + step * (length - 1)
            fill = first == _FILL
            if fill and index == _FILL:
                runs[-1] = (first, length + 1, 0)
                return
            if not fill and index != _FILL:
                candidate = index - last
                if length == 1 and candidate in (1, -1, 0):
                    runs[-1] = (first, 2, candidate)
                    return
                if length > 1 and candidate == step:
                    runs[-1] = (first, length + 1, step)
                    return
        runs.append((index, 1, 0))

    for first, length, step in segments:
        # After three indices of a segment the last run has its step: the rest
        # of the segment extends it.
        for k in range(min(length, 3)):
            push(first + k * step)
        if length > 3:
            first, count, step = runs[-1]
            runs[-1] = (first, count + length - 3, step)
    return runs


# A read of at most this fraction of the input is a *strip* (see `_read`).
STRIP_FRACTION = 0.5


def _read(x: Array, starts: Sequence[int], sizes: Sequence[int]) -> Array:
    """`x[starts : starts + sizes]`, so that its gradient costs O(piece).

    The transpose of a static slice is a pad to `x`'s whole shape, one more
    full-size term in the cotangent of `x` per piece read. A strip (a piece of
    at most `STRIP_FRACTION` of `x`) is read by `dynamic_slice` at starts
    behind an `optimization_barrier`, so XLA keeps its transpose a
    `dynamic_update_slice` and folds `y + update(zeros, piece)` into an
    in-place `update(y, y[piece] + piece)`: O(piece) work in the backward
    pass, whatever the function does with the strip (`0.0 * u[0, 0]` too).
    """
    if tuple(sizes) == x.shape:
        return x
    if math.prod(sizes) > STRIP_FRACTION * x.size:
        limits = [start + size for start, size in zip(starts, sizes)]
        return lax.slice(x, starts, limits)
    opaque = lax.optimization_barrier(tuple(np.int32(start) for start in starts))
    return lax.dynamic_slice(x, opaque, sizes, allow_negative_indices=False)


def _cell(x: Array, runs: Sequence[Run], fill: np.ndarray) -> Array:
    """One block of the box: a run per dim, read from `x` at once (reversed
    along reflected runs, broadcast along repeated ones) or filled."""
    shape = tuple(length for _, length, _ in runs)
    if any(first == _FILL for first, _, _ in runs):
        return jnp.full(shape, fill, x.dtype)
    starts = [first - length + 1 if step < 0 else first for first, length, step in runs]
    sizes = [1 if step == 0 else length for _, length, step in runs]
    piece = _read(x, starts, sizes)
    flipped = tuple(axis for axis, (_, _, step) in enumerate(runs) if step < 0)
    if flipped:
        piece = lax.rev(piece, flipped)
    return jnp.broadcast_to(piece, shape)


def padded_box(
    x: Array,
    layouts: Sequence[DimLayout],
    box: Sequence[tuple[int, int]],
    mode: str,
    cval: Cval,
) -> Array:
    """The box `[start, stop)` per dim of `x` padded by `layouts` in `mode`.

    Per dim, the padded coordinates split into runs (`_index_runs`); every product
    of runs is one block, read from `x` in one piece (`_cell`), so the box
    costs O(box) forward and backward."""
    fill = fill_value(cval if mode == "constant" else 0, x.dtype)
    runs = [
        _dim_runs(layout.size, layout.lo, start, stop, mode)
        for layout, (start, stop) in zip(layouts, box)
    ]
    if not all(runs):  # an empty box
        return jnp.zeros(tuple(stop - start for start, stop in box), x.dtype)

    def join(chosen: tuple[Run, ...]) -> Array:
        axis = len(chosen)
        if any(first == _FILL for first, _, _ in chosen):
            # A block of fill is one `full`, however many runs it spans.
            lengths = (sum(length for _, length, _ in dim) for dim in runs[axis:])
            chosen = (*chosen, *((_FILL, length, 0) for length in lengths))
        if len(chosen) == len(runs):
            return _cell(x, chosen, fill)
        parts = [join((*chosen, run)) for run in runs[axis]]
        return parts[0] if len(parts) == 1 else lax.concatenate(parts, axis)

    return join(())
