"""Window keys: absolute, relative (numba.stencil style) and named-axis indexing.

`WindowIndex.resolve` turns what a user writes inside a stencil function
(`x[1, -1]`, `x["i+1", "j"]`, `x[-1:2, 0]`) into absolute tap indices of the
window, and raises `IndexError` naming the allowed range for anything outside
the window.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from typing import Any


Resolved = tuple[int | slice, ...]

_NAMED = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:([+-])\s*(\d+))?\s*$")


@dataclasses.dataclass(frozen=True)
class WindowIndex:
    """How keys map to taps for a window of `kernel` taps per dim."""

    kernel: tuple[int, ...]
    relative: bool
    named_axis: tuple[tuple[int, str], ...] | None

    def _bounds(self, dim: int) -> tuple[int, int]:
        """Allowed offsets `[low, high]` in dim `dim` (inclusive)."""
        k = self.kernel[dim]
        if self.relative:
            anchor = (k - 1) // 2
            return -anchor, k - 1 - anchor
        return -k, k - 1

    def _range_text(self, dim: int) -> str:
        low, high = self._bounds(dim)
        kind = "relative offsets" if self.relative else "indices"
        return f"{kind} {low}..{high} (kernel_size {self.kernel[dim]})"

    def _tap(self, dim: int, offset: int, key: Any) -> int:
        low, high = self._bounds(dim)
        if not low <= offset <= high:
            raise IndexError(
                f"window index {key!r} is outside the window in dim {dim}: "
                f"allowed {self._range_text(dim)}."
            )
        if self.relative:
            return offset + (self.kernel[dim] - 1) // 2
        return offset % self.kernel[dim]

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
            return item
        low, high = self._bounds(dim)
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

    def resolve(self, key: Any) -> Resolved:
        """Absolute tap indices (ints and slices), one entry per given dim.

        Raises `TypeError` for entries that are neither ints, slices, `...` nor
        named keys (for example traced indices).
        """
        items = key if isinstance(key, tuple) else (key,)
        ndim = len(self.kernel)
        if any(item is Ellipsis for item in items):
            at = items.index(Ellipsis)
            fill = (slice(None),) * (ndim - len(items) + 1)
            items = items[:at] + fill + items[at + 1 :]
        if len(items) > ndim:
            raise IndexError(
                f"window key {key!r} has {len(items)} entries but the window has "
                f"{ndim} dims (kernel_size {self.kernel})."
            )
        strings = [isinstance(item, str) for item in items]
        by_name = len(items) == ndim and all(strings) and self.named_axis is not None
        resolved: list[int | slice] = [slice(None)] * len(items)
        for position, item in enumerate(items):
            if isinstance(item, str):
                dim, offset = self._parse_named(item, key)
                if not by_name and dim != position:
                    raise IndexError(
                        f"window key {item!r} names dim {dim} but stands at position "
                        f"{position} of {key!r}; with partially named axes each entry "
                        "must stand at its own dim."
                    )
                if by_name and not isinstance(resolved[dim], slice):
                    raise IndexError(f"window key {key!r} names dim {dim} twice.")
                resolved[dim] = self._tap(dim, offset, key)
            elif isinstance(item, slice):
                resolved[position] = self._slice(position, item, key)
            elif isinstance(item, bool):
                raise TypeError(f"window index must be an int, got {item!r}.")
            else:
                try:
                    offset = operator.index(item)
                except TypeError:
                    raise TypeError(
                        f"window index {item!r} is not a static int, slice or named "
                        "key."
                    ) from None
                resolved[position] = self._tap(position, offset, key)
        return tuple(resolved)
