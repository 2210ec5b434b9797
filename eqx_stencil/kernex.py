"""kernex 0.2.1 compatibility: port by changing the import line.

```python
import eqx_stencil.kernex as kernex   # was: import kernex

F = kernex.kmap(kernel_size=(1,))
F[0] = lambda x: x[0] ** 2            # kernex's mutable function mesh
F[1:] = lambda x: x[0] ** 3
F(jnp.arange(1.0, 11.0))
```

The classes keep kernex's signatures (`map_kind`/`map_kwargs` are accepted and
validated, and every map kind gives the same result on any device count;
`scan_kwargs={"reverse": True}` reverses a sweep) and its
mutable `F[index] = func` syntax, on top of the immutable
[`eqx_stencil.Stencil`][]: each call builds the stencil from the current table,
so calling again, or under another trace, gives the same result (kernex 0.2.1
mutates its table on each call). kernex's own rules are kept: regions are
ordered by the first assignment of each function (a function assigned again
keeps its place), later ones win, and a position covered by no region takes
the first function assigned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ._geometry import BoolLike, IntLike, IntsLike, OffsetLike, PaddingLike
from ._stencil import (
    Stencil,
    kmap as _kmap,
    kscan as _kscan,
    smap as _smap,
    sscan as _sscan,
)
from .tree import _kernex_viz as viz, static_field as static_field, treeclass


__all__ = ["kmap", "kscan", "smap", "sscan", "static_field", "treeclass", "viz"]

MAP_KINDS = ("vmap", "lmap", "pmap")
SCAN_KINDS = ("scan",)


def _check_kind(name: str, kind: str, kinds: tuple[str, ...], kwargs: Any) -> None:
    if kind not in kinds:
        raise ValueError(f"{name}_kind must be one of {kinds}; got {kind!r}.")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"{name}_kwargs must be a dict or None; got {kwargs!r}.")


class _FunctionMesh:
    """kernex's `KernelInterface`: a mutable region table and a decorator."""

    def __init__(self, stencil: Stencil) -> None:
        self._base = stencil
        self._table: dict[Callable, list[Any]] = {}

    def __setitem__(self, index: Any, func: Callable) -> None:
        if not callable(func):
            raise TypeError(f"Input not callable. Found {type(func)}")
        self._table.setdefault(func, []).append(index)

    @property
    def stencil(self) -> Stencil:
        """The immutable stencil the current table describes."""
        stencil = self._base
        if stencil.func is None and self._table:
            # kernex: a position in no region takes the first function assigned
            stencil = dataclasses.replace(stencil, func=next(iter(self._table)))
        for func, indices in self._table.items():
            for index in indices:
                stencil = stencil.at[index].set(func)
        return stencil

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.stencil(*args, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.stencil!r})"


class kmap(_FunctionMesh):
    """kernex's `kmap`: apply a function to every window (see
    [`eqx_stencil.kmap`][]).

    **Arguments:**

    - `kernel_size`, `strides`, `padding`, `relative`, `named_axis`: as in
      [`eqx_stencil.kmap`][].
    - `map_kind`: `"vmap"`, `"lmap"` or `"pmap"`; accepted for compatibility,
      the result is the same.
    - `map_kwargs`: accepted for compatibility.

    **Returns:**

    A function mesh: assign functions with `F[index] = func`, decorate a
    function with `@kmap(...)`, or apply with `F(array, *args)`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil.kernex as kex

    @kex.kmap(kernel_size=(3,))
    def moving_average(x):
        return jnp.mean(x)

    moving_average(jnp.array([1.0, 2.0, 3.0, 7.0, 9.0]))  # [2.0, 4.0, 6.333]
    ```
    """

    def __init__(
        self,
        kernel_size: IntsLike = 1,
        strides: IntsLike = 1,
        padding: PaddingLike = 0,
        relative: BoolLike = False,
        named_axis: dict[IntLike, str] | None = None,
        map_kind: str = "vmap",
        map_kwargs: dict | None = None,
    ) -> None:
        stencil = _kmap(
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            relative=relative,
            named_axis=named_axis,
        )
        _check_kind("map", map_kind, MAP_KINDS, map_kwargs)
        super().__init__(stencil)


class smap(_FunctionMesh):
    """kernex's `smap`: a shape-preserving map (see [`eqx_stencil.smap`][]).

    **Arguments:**

    - `kernel_size`, `strides`, `offset`, `relative`, `named_axis`: as in
      [`eqx_stencil.smap`][].
    - `map_kind`, `map_kwargs`: accepted for compatibility.

    **Returns:**

    A function mesh, as [`eqx_stencil.kernex.kmap`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil.kernex as kex

    F = kex.smap(kernel_size=(2,), relative=True, offset=((2, 0),))
    F(lambda x: x[0] + x[1])(jnp.arange(1, 6))  # [1, 2, 7, 9, 5]
    ```
    """

    def __init__(
        self,
        kernel_size: IntsLike = 1,
        strides: IntsLike = 1,
        offset: OffsetLike = 0,
        relative: BoolLike = False,
        named_axis: dict[IntLike, str] | None = None,
        map_kind: str = "vmap",
        map_kwargs: dict | None = None,
    ) -> None:
        stencil = _smap(
            kernel_size=kernel_size,
            strides=strides,
            offset=offset,
            relative=relative,
            named_axis=named_axis,
        )
        _check_kind("map", map_kind, MAP_KINDS, map_kwargs)
        super().__init__(stencil)


def _reverse(scan_kwargs: dict | None) -> Any:
    """`scan_kwargs["reverse"]`, validated by the stencil (a bool)."""
    unknown = set(scan_kwargs or {}) - {"reverse"}
    if unknown:
        raise ValueError(
            f"scan_kwargs accepts only 'reverse' here; got {sorted(unknown)}."
        )
    return (scan_kwargs or {}).get("reverse", False)


class kscan(_FunctionMesh):
    """kernex's `kscan`: a sequential sweep (see [`eqx_stencil.kscan`][]).

    **Arguments:**

    - `kernel_size`, `strides`, `padding`, `relative`, `named_axis`: as in
      [`eqx_stencil.kscan`][].
    - `scan_kind`: `"scan"`.
    - `scan_kwargs`: `{"reverse": True}` sweeps in reverse order.

    **Returns:**

    A function mesh, as [`eqx_stencil.kernex.kmap`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil.kernex as kex

    F = kex.kscan(kernel_size=(3,), padding=1, relative=True)
    F(lambda x: x[-1] + x[0])(jnp.ones(5))  # [1, 2, 3, 4, 5]
    ```
    """

    def __init__(
        self,
        kernel_size: IntsLike = 1,
        strides: IntsLike = 1,
        padding: PaddingLike = 0,
        relative: BoolLike = False,
        named_axis: dict[IntLike, str] | None = None,
        scan_kind: str = "scan",
        scan_kwargs: dict | None = None,
    ) -> None:
        _check_kind("scan", scan_kind, SCAN_KINDS, scan_kwargs)
        stencil = _kscan(
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            relative=relative,
            named_axis=named_axis,
            reverse=_reverse(scan_kwargs),
        )
        super().__init__(stencil)


class sscan(_FunctionMesh):
    """kernex's `sscan`: a shape-preserving sweep (see [`eqx_stencil.sscan`][]).

    **Arguments:**

    - `kernel_size`, `strides`, `offset`, `relative`, `named_axis`: as in
      [`eqx_stencil.sscan`][].
    - `scan_kind`, `scan_kwargs`: as in [`eqx_stencil.kernex.kscan`][].

    **Returns:**

    A function mesh, as [`eqx_stencil.kernex.kmap`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil.kernex as kex

    F = kex.sscan(kernel_size=(3,), relative=True, offset=1)
    F(lambda x: x[-1] + x[0])(jnp.ones(5))  # [1, 2, 3, 4, 1]
    ```
    """

    def __init__(
        self,
        kernel_size: IntsLike = 1,
        strides: IntsLike = 1,
        offset: OffsetLike = 0,
        relative: BoolLike = False,
        named_axis: dict[IntLike, str] | None = None,
        scan_kind: str = "scan",
        scan_kwargs: dict | None = None,
    ) -> None:
        _check_kind("scan", scan_kind, SCAN_KINDS, scan_kwargs)
        stencil = _sscan(
            kernel_size=kernel_size,
            strides=strides,
            offset=offset,
            relative=relative,
            named_axis=named_axis,
            reverse=_reverse(scan_kwargs),
        )
        super().__init__(stencil)
