"""What a stencil function receives as its window.

- `TapProxy` (shift lowering): integer indexing `x[i, j]` looks a tap up;
  any other use raises `NeedsWindow`, the private signal that makes the planner
  fall back to the window lowering.
- `Window` (window lowering with relative or named indexing): the whole window
  with the package's key rules. It is a pytree over the window array, so `jnp`
  functions (`jnp.max(w)`), arithmetic, methods (`w.sum()`, `w.shape`) and
  `jnp.asarray(w)` / `w.array` see the window in natural order (index 0 = first
  tap).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.tree_util as jtu
from jaxtyping import Array

from ._indexing import WindowIndex


class NeedsWindow(Exception):
    """Private signal: the function uses its window as a whole."""


def _needs_window(*_: Any, **__: Any) -> Any:
    raise NeedsWindow


_OPERATORS = (
    "add radd sub rsub mul rmul truediv rtruediv floordiv rfloordiv mod rmod pow rpow "
    "matmul rmatmul and rand or ror xor rxor lshift rlshift rshift rrshift lt le gt ge "
    "neg pos abs invert"
).split()


class TapProxy:
    """Stand-in for the window during the shift lowering."""

    __slots__ = ("_index", "_lookup")

    def __init__(
        self, index: WindowIndex, lookup: Callable[[tuple[int, ...]], Any]
    ) -> None:
        self._index = index
        self._lookup = lookup

    def __getitem__(self, key: Any) -> Any:
        try:
            taps = self._index.resolve(key)
        except TypeError:
            raise NeedsWindow from None
        if len(taps) != len(self._index.kernel) or any(
            isinstance(tap, slice) for tap in taps
        ):
            raise NeedsWindow
        return self._lookup(taps)  # pyright: ignore[reportArgumentType]

    def __getattr__(self, name: str) -> Any:
        raise NeedsWindow

    __jax_array__ = __array__ = __iter__ = __len__ = __bool__ = _needs_window
    __float__ = __int__ = __complex__ = __index__ = __eq__ = __ne__ = _needs_window
    __hash__ = None  # pyright: ignore[reportAssignmentType]


def _install_operators(cls: type, make: Callable[[str], Callable[..., Any]]) -> None:
    for name in _OPERATORS:
        setattr(cls, f"__{name}__", make(name))


_install_operators(TapProxy, lambda name: _needs_window)


class Window:
    """The window array with relative / named-axis indexing."""

    __slots__ = ("array", "_index")

    def __init__(self, array: Array, index: WindowIndex) -> None:
        self.array = array
        self._index = index

    def __getitem__(self, key: Any) -> Array:
        return self.array[self._index.resolve(key)]

    def __jax_array__(self) -> Array:
        return self.array

    def __getattr__(self, name: str) -> Any:
        return getattr(self.array, name)

    def __len__(self) -> int:
        return len(self.array)

    def __repr__(self) -> str:
        return f"Window({self.array!r})"


def _forward(name: str) -> Callable[..., Any]:
    method = f"__{name}__"

    def forwarded(self: Window, *args: Any) -> Any:
        return getattr(self.array, method)(*args)

    return forwarded


_install_operators(Window, _forward)
jtu.register_pytree_node(
    Window,
    lambda window: ((window.array,), window._index),
    lambda index, children: Window(children[0], index),
)


def unwrap_windows(tree: Any) -> Any:
    """Replace every `Window` in `tree` by its plain array."""
    return jtu.tree_map(
        lambda node: node.array if isinstance(node, Window) else node,
        tree,
        is_leaf=lambda node: isinstance(node, Window),
    )
