"""What a stencil function receives as its window.

- `TapProxy` (shift lowering): integer indexing `x[i, j]` looks a tap up;
  any other use raises `NeedsWindow`, the private signal that makes the planner
  fall back to the window lowering.
- `Window` (window lowering): the whole window with the package's key rules
  (absolute, relative or named; a key outside the window raises `IndexError`).
  Every other use sees the window array in natural order (index 0 = first
  tap), exactly as a plain array would: iteration, unpacking, `reversed`,
  `in`, `len`, comparisons and arithmetic (also with NumPy arrays and Python
  scalars), `jnp` functions (`jnp.max(w)`), methods and attributes (`w.sum()`,
  `w.T`, `w.shape`), `np.asarray(w)` / `jnp.asarray(w)` / `w.array`. It is a
  pytree whose only leaf is the window array; put back as an array it becomes
  that plain array. So JAX transformations and custom-derivative functions
  given a window (`jax.jit`, `jax.vmap`, `lax.scan`, `jax.tree.map`,
  `jax.nn.relu`, whose derivative rule runs `lax` on it) work on the plain
  array: inside them it is indexed as a plain array. `lax` functions do not
  accept a window itself (JAX no longer converts objects there): pass
  `jnp.asarray(w)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array

from ._indexing import WindowIndex


class NeedsWindow(BaseException):
    """Private signal: the function uses its window as a whole.

    A `BaseException`, so that a user's `except Exception:` cannot swallow it
    and let the shift lowering compute something else than the function.
    """


def _needs_window(*_: Any, **__: Any) -> Any:
    raise NeedsWindow


_OPERATORS = (
    "add radd sub rsub mul rmul truediv rtruediv floordiv rfloordiv mod rmod pow rpow "
    "matmul rmatmul and rand or ror xor rxor lshift rlshift rshift rrshift divmod "
    "rdivmod lt le gt ge eq ne neg pos abs invert"
).split()
# Every other protocol a user may touch, by the method Python or NumPy calls.
_PROTOCOLS = (
    "iter contains len bool float int complex index round format array setitem"
).split()


class TapProxy:
    """Stand-in for the window during the shift lowering."""

    __slots__ = ("_index", "_lookup")
    __array_priority__ = 100  # NumPy defers `np_array * proxy` to the proxy

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
        if len(taps) != len(self._index.kernel) or not all(
            type(tap) is int for tap in taps
        ):
            raise NeedsWindow
        return self._lookup(taps)  # pyright: ignore[reportArgumentType]

    def __getattr__(self, name: str) -> Any:
        raise NeedsWindow

    __reversed__ = _needs_window

    @property
    def __jax_array__(self) -> Any:  # even probing it is whole-window use
        raise NeedsWindow

    __hash__ = _needs_window  # pyright: ignore[reportAssignmentType]


class Window:
    """The window array with the package's indexing rules."""

    __slots__ = ("array", "_index")
    __array_priority__ = 100  # NumPy defers `np_array * window` to the window
    __hash__ = None  # pyright: ignore[reportAssignmentType]  # like an array

    def __init__(self, array: Any, index: WindowIndex) -> None:
        # `array` is the window array; in a pytree utility, a mask or `None`.
        self.array = array
        self._index = index

    def __getitem__(self, key: Any) -> Array:
        return self.array[self._index.resolve(key)]

    @property
    def at(self) -> _WindowAt:
        """`w.at[key].set(...)` etc. with the window's key rules."""
        return _WindowAt(self)

    def __jax_array__(self) -> Array:
        return self.array

    def __reversed__(self) -> Any:  # concrete JAX arrays have no __reversed__
        return reversed(self.array)

    def __getattr__(self, name: str) -> Any:
        if name in Window.__slots__:  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.array, name)

    def __repr__(self) -> str:
        return f"Window({self.array!r})"


class _WindowAt:
    __slots__ = ("_window",)

    def __init__(self, window: Window) -> None:
        self._window = window

    def __getitem__(self, key: Any) -> Any:
        return self._window.array.at[self._window._index.resolve(key)]


def _install(cls: type, names: Sequence[str], make: Callable[[str], Any]) -> None:
    for name in names:
        setattr(cls, f"__{name}__", make(name))


def _forward(name: str) -> Callable[..., Any]:
    method = f"__{name}__"

    def forwarded(self: Window, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.array, method)(*args, **kwargs)

    return forwarded


_install(TapProxy, _OPERATORS + _PROTOCOLS, lambda name: _needs_window)
_install(Window, _OPERATORS + _PROTOCOLS, _forward)


def _unflatten(index: WindowIndex, children: Sequence[Any]) -> Any:
    """An array (what a transformation or a derivative rule puts back) stays a
    plain array; anything else (a filter mask, `None`) keeps the `Window` node,
    so that prefix-tree utilities such as `eqx.partition` line up."""
    (child,) = children
    return child if isinstance(child, (jax.Array, np.ndarray)) else Window(child, index)


jtu.register_pytree_node(
    Window, lambda window: ((window.array,), window._index), _unflatten
)


def unwrap_windows(tree: Any) -> Any:
    """Replace every `Window` in `tree` by its plain array."""
    return jtu.tree_map(
        lambda node: node.array if isinstance(node, Window) else node,
        tree,
        is_leaf=lambda node: isinstance(node, Window),
    )
