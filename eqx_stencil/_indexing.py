"""Window keys: absolute, relative (numba.stencil style) and named-axis indexing.

`WindowIndex.resolve` turns what a user writes inside a stencil function
(`x[1, -1]`, `x["i+1", "j"]`, `x[-1:2, 0]`, `x[..., None]`) into an index of
the window array in natural order (index 0 = first tap), and raises
`IndexError` naming the allowed range for anything outside the window.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from typing import Any

import jax
import numpy as np

from ._geometry import anchor_tap


Resolved = tuple[int | slice | None | np.ndarray, ...]

_NAMED = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:([+-])\s*(\d+))?\s*$")


def _index_array(item: Any, key: Any) -> np.ndarray | None:
    """`item` as a static NumPy integer or boolean index array (`ndim >= 1`),
    or `None` when it is no array at all."""
    if not isinstance(item, (np.ndarray, jax.Array)):
        return None
    try:
        array = np.asarray(item)
    except TypeError:  # a traced array
        raise TypeError(
            f"window index {item!r} (in {key!r}) is traced: a window is indexed by "
            "static keys (ints, slices, None, ..., static NumPy arrays or named "
            "keys). To index by a traced value use `jnp.asarray(window)[index]` "
            "(JAX clamps out-of-range indices there)."
        ) from None
    if array.ndim == 0:
        return None  # a 0-d array indexes like the scalar it holds
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise TypeError(
            f"window index {item!r} (in {key!r}) is not a static int, slice, None, "
            "..., integer or boolean index array, or named key."
        )
    return array


@dataclasses.dataclass(frozen=True)
class WindowIndex:
    """How keys map to taps for a window of `kernel` taps per dim."""

    kernel: tuple[int, ...]
    relative: bool
    named_axis: tuple[tuple[int, str], ...] | None

    def _bounds(self, dim: int, named: bool) -> tuple[int, int]:
        """Allowed offsets `[low, high]` in dim `dim` (inclusive)."""
        k = self.kernel[dim]
        if self.relative:
            anchor = anchor_tap(k)
            return -anchor, k - 1 - anchor
        # Absolute: ints index like Python (negative from the end); a named
        # offset counts from the window's first tap.
        return (0 if named else -k), k - 1

    def _range_text(self, dim: int, named: bool = False) -> str:
        low, high = self._bounds(dim, named)
        size = f"kernel_size {self.kernel[dim]}"
        if self.relative:
            return f"relative offsets {low}..{high} ({size})"
        if named:
            first = "with relative=False they count from the first tap"
            return f"named offsets {low}..{high} ({size}; {first})"
        return f"indices {low}..{high} ({size})"

    def _taps(self, dim: int, offsets: Any, key: Any, named: bool = False) -> Any:
        """Window index of `offsets` (an int or an integer array) in dim `dim`."""
        low, high = self._bounds(dim, named)
        values = np.asarray(offsets)
        if values.size and not (low <= values.min() and values.max() <= high):
            raise IndexError(
                f"window index {key!r} is outside the window in dim {dim}: "
                f"allowed {self._range_text(dim, named)}."
            )
        if self.relative:
            return offsets + anchor_tap(self.kernel[dim])
        return offsets % self.kernel[dim]

    def _parse_named(self, item: str, key: Any) -> tuple[int, int]:
        """`'i+1'` -> (dim of 'i', 1)."""
        names = dict((name, dim) for dim, name in self.named_axis or ())
        match = _NAMED.match(item)
        if match is None or match.group(1) not in names:
            raise IndexError(
                f"window key {item!r} (in {key!r}) does not parse: expected NAME, "
                f"NAME+K or NAME-K with NAME one of {tuple(names)} from named_axis."
            )
        name, sign, amount = match.groups()
        offset = int(amount or 0) * (-1 if sign == "-" else 1)
        return names[name], offset

    def _slice(self, dim: int, item: slice, key: Any) -> slice:
        if not self.relative:
            return item  # Python's (and NumPy's) slice semantics
        low, high = self._bounds(dim, False)
        for bound in (item.start, item.stop):
            if bound is not None and not low <= bound <= high + 1:
                raise IndexError(
                    f"window slice {item!r} (in {key!r}) is outside the window in dim "
                    f"{dim}: allowed {self._range_text(dim)}."
                )
        anchor = -low

        def shift(bound: int | None) -> int | None:
            return None if bound is None else bound + anchor

        return slice(shift(item.start), shift(item.stop), item.step)

    def _expand(self, key: Any) -> tuple[list[Any], list[int]]:
        """The key's entries with `...` expanded, and the window dim each entry
        starts at (a `None` entry adds a dim and consumes none)."""
        items = list(key) if isinstance(key, tuple) else [key]
        arrays = [_index_array(item, key) for item in items]
        items = [item if array is None else array for item, array in zip(items, arrays)]

        def width(item: Any) -> int:
            if item is None or item is Ellipsis:
                return 0
            if isinstance(item, np.ndarray) and item.dtype == np.bool_:
                return item.ndim
            return 1

        ndim = len(self.kernel)
        used = sum(width(item) for item in items)
        ellipses = [at for at, item in enumerate(items) if item is Ellipsis]
        if len(ellipses) > 1:
            raise IndexError(f"window key {key!r} has more than one '...'.")
        if ellipses:
            at = ellipses[0]
            items[at : at + 1] = [slice(None)] * max(ndim - used, 0)
        if used > ndim:
            raise IndexError(
                f"window key {key!r} has {used} entries but the window has "
                f"{ndim} dims (kernel_size {self.kernel})."
            )
        dims: list[int] = []
        dim = 0
        for item in items:
            dims.append(dim)
            dim += width(item)
        return items, dims

    def resolve(self, key: Any) -> Resolved:
        """The window index (natural order) that `key` stands for.

        Raises `IndexError` for a key outside the window, `TypeError` for an
        entry that is no static index (for example a traced one).
        """
        items, dims = self._expand(key)
        ndim = len(self.kernel)
        strings = [isinstance(item, str) for item in items]
        by_name = len(items) == ndim and all(strings) and self.named_axis is not None
        resolved: list[Any] = list(items)
        named_dims: set[int] = set()
        for position, (item, dim) in enumerate(zip(items, dims)):
            if isinstance(item, str):
                named, offset = self._parse_named(item, key)
                if not by_name and named != dim:
                    raise IndexError(
                        f"window key {item!r} names dim {named} but stands at position "
                        f"{position} of {key!r}; with partially named axes each entry "
                        "must stand at its own dim."
                    )
                if named in named_dims:
                    raise IndexError(f"window key {key!r} names dim {named} twice.")
                named_dims.add(named)
                resolved[named if by_name else position] = self._taps(
                    named, offset, key, named=True
                )
            elif item is None:
                continue
            elif isinstance(item, slice):
                resolved[position] = self._slice(dim, item, key)
            elif isinstance(item, np.ndarray):
                if item.dtype == np.bool_:
                    expected = self.kernel[dim : dim + item.ndim]
                    if item.shape != expected:
                        raise IndexError(
                            f"boolean window index of shape {item.shape} (in "
                            f"{key!r}) does not match the window's shape {expected} "
                            f"from dim {dim} (kernel_size {self.kernel})."
                        )
                else:
                    resolved[position] = self._taps(dim, item, key)
            elif isinstance(item, bool):
                raise TypeError(f"window index must be an int, got {item!r}.")
            else:
                try:
                    offset = operator.index(item)
                except TypeError:
                    raise TypeError(
                        f"window index {item!r} (in {key!r}) is not a static int, "
                        "slice, None, ..., integer or boolean index array, or named "
                        "key."
                    ) from None
                resolved[position] = int(self._taps(dim, offset, key))
        return tuple(resolved)
