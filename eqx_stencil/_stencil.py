"""`Stencil`, the Equinox module, and the `kmap` constructor."""

from __future__ import annotations

import dataclasses
import functools as ft
from collections.abc import Callable
from typing import Any

import equinox as eqx
from jax.sharding import NamedSharding
from jaxtyping import Array, ArrayLike, PyTree

from ._geometry import (
    Cval,
    Geometry,
    IntOrTuple,
    Offset,
    Padding,
    normalize_boundary,
    normalize_ints,
    normalize_named_axis,
    normalize_offset,
    normalize_padding,
)
from ._indexing import WindowIndex
from ._lower import Fields, Problem, as_fields, lower, resolve_table
from ._regions import Region, normalize_region
from ._scan import sweep
from ._shard import check_sharding


def _check_func(func: Any, name: str = "func") -> Any:
    if func is not None and not callable(func):
        raise TypeError(
            f"{name} must be callable (the function applied to every window); got "
            f"{func!r} of type {type(func).__name__}."
        )
    return func


def _check_cval(cval: Any) -> Cval:
    if not isinstance(cval, (bool, int, float, complex)):
        raise TypeError(
            f"cval must be a Python number (the fill value of boundary='constant'); "
            f"got {cval!r} of type {type(cval).__name__}."
        )
    return cval


class Stencil(eqx.Module):
    """A stencil operator: window geometry and the function applied to windows.

    Build one with [`eqx_stencil.kmap`][]. The module is immutable: calling it
    never changes it, so it can be called, traced, `jit`ted and differentiated
    any number of times. The function is a module field, so a function that is
    itself an `eqx.Module` (holding arrays) is part of the pytree and gets
    gradients with `eqx.filter_grad`.

    Calling it:

    - `stencil(array, *args, **kwargs)` applies the function to every window of
      `array` and returns an array of shape `out_shape + S`, where `S` is the
      shape the function returns. `args`/`kwargs` are passed unchanged to every
      window's function (weights, coefficients) and are differentiable.
    - `stencil(func)` (a stencil built without a function) returns a new stencil
      with `func` as its function: the decorator form.
    - `stencil(fields)` with a pytree of same-shape arrays gives the function
      the same pytree of windows (multi-field stencils).

    **Example:**

    ```python
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import eqx_stencil as es


    class Smoother(eqx.Module):
        weight: jax.Array  # learnable centre weight
        stencil: es.Stencil = es.kmap(
            lambda u, c: c * u[0] + (1 - c) * (u[-1] + u[1]) / 2,
            kernel_size=3, padding="same", relative=True, boundary="edge",
        )

        def __call__(self, u):
            return self.stencil(u, self.weight)


    model = Smoother(jnp.array(0.5))
    grads = eqx.filter_grad(lambda m: jnp.sum(m(jnp.arange(5.0)) ** 2))(model)
    print(grads.weight)
    ```
    """

    func: Callable | None = eqx.field(converter=_check_func)
    kernel_size: IntOrTuple = eqx.field(
        static=True, converter=ft.partial(normalize_ints, "kernel_size", minus_one=True)
    )
    strides: IntOrTuple = eqx.field(
        static=True, default=1, converter=ft.partial(normalize_ints, "strides")
    )
    padding: Padding = eqx.field(static=True, default=0, converter=normalize_padding)
    dilation: IntOrTuple = eqx.field(
        static=True, default=1, converter=ft.partial(normalize_ints, "dilation")
    )
    relative: bool = eqx.field(static=True, default=False)
    named_axis: tuple[tuple[int, str], ...] | None = eqx.field(
        static=True, default=None, converter=normalize_named_axis
    )
    boundary: str = eqx.field(
        static=True, default="constant", converter=normalize_boundary
    )
    cval: Cval = eqx.field(static=True, default=0, converter=_check_cval)
    offset: Offset | None = eqx.field(
        static=True, default=None, converter=normalize_offset
    )
    scan: bool = eqx.field(static=True, default=False)
    reverse: bool = eqx.field(static=True, default=False)
    sharding: NamedSharding | None = eqx.field(
        static=True, default=None, converter=check_sharding
    )
    regions: tuple[Callable, ...] = ()
    region_keys: tuple[Region, ...] = eqx.field(static=True, default=())

    def __check_init__(self) -> None:
        _ = self._geometry  # validates that tuple arguments agree in length

    @property
    def _geometry(self) -> Geometry:
        if self.offset is not None:  # smap: the output grid is the input grid
            return Geometry(self.kernel_size, 1, "same", self.dilation)
        return Geometry(self.kernel_size, self.strides, self.padding, self.dilation)

    def _frame(self, shape: tuple[int, ...]) -> Region | None:
        """smap: the box where functions apply, as a region of the input."""
        if self.offset is None:
            return None
        ndim = len(shape)
        offsets = (
            ((self.offset, self.offset),) * ndim
            if isinstance(self.offset, int)
            else self.offset
        )
        strides = (
            self.strides if isinstance(self.strides, tuple) else (self.strides,) * ndim
        )
        if len(offsets) != ndim or len(strides) != ndim:
            raise ValueError(
                f"offset={self.offset!r} and strides={self.strides!r} need one entry "
                f"per dim of the array (shape {shape})."
            )
        # An offset box wider than the array is empty (every position keeps its
        # input); clamp the stop so that `n - hi < 0` is not read from the end.
        return tuple(
            (lo, max(n - hi, lo), step)
            for (lo, hi), n, step in zip(offsets, shape, strides)
        )

    def _window_index(self, kernel: tuple[int, ...]) -> WindowIndex:
        for dim, name in self.named_axis or ():
            if dim >= len(kernel):
                raise ValueError(
                    f"named_axis names dim {dim} ({name!r}) but the array has rank "
                    f"{len(kernel)}; name dims 0..{len(kernel) - 1}."
                )
        return WindowIndex(kernel, self.relative, self.named_axis)

    def __call__(
        self, array: PyTree[ArrayLike] | Callable, *args: Any, **kwargs: Any
    ) -> PyTree[Array] | Stencil:
        """Apply the stencil to `array` (or set `array` as the function).

        **Arguments:**

        - `array`: the input array, of rank equal to the kernel's; or a pytree
          (tuple, dict, Module) of same-shape arrays, the *fields* of a
          multi-field stencil: the function then receives the same pytree of
          windows (`def f(w): u, v = w; ...`). A callable instead (with no
          other arguments) gives a new stencil with it as the function:
          `es.kmap(kernel_size=3)(f)`.
        - `*args`, `**kwargs`: passed unchanged to every window's function.

        **Returns:**

        An array of shape `out_shape + S` (`S`: the shape the function returns);
        a function returning a pytree gives that pytree with each leaf so
        shaped.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        mean3 = es.kmap(lambda w: jnp.mean(w), kernel_size=3)
        mean3(jnp.array([1.0, 2.0, 3.0, 7.0, 9.0]))  # [2.0, 4.0, 6.333]
        ```
        """
        if callable(array) and not args and not kwargs:
            return dataclasses.replace(self, func=array)
        return _compiled_apply(self, array, args, kwargs)

    def _apply(self, fields: Fields, args: tuple, kwargs: dict) -> PyTree[Array]:
        if self.func is None and not self.regions:
            raise ValueError(
                "this stencil has no function: give one with es.kmap(func, ...), "
                "by decorating, es.kmap(kernel_size=...)(func), or per region with "
                ".at[index].set(func)."
            )
        layouts = self._geometry.layout(fields.shape)
        index = self._window_index(tuple(layout.kernel for layout in layouts))
        problem = Problem(
            fields, layouts, index, self.boundary, self.cval, args, kwargs
        )
        frame = self._frame(fields.shape)
        funcs = (self.func, *self.regions)
        table = resolve_table(problem, funcs, self.region_keys, frame)
        if self.scan:
            return sweep(problem, table, self.reverse)
        return lower(problem, table)

    @property
    def at(self) -> _StencilAt:
        """Functional region update: `stencil.at[index].set(func)`.

        **Arguments:**

        - `index`: ints, slices (any step, negative bounds), `...`, tuples of
          these, or a static NumPy boolean mask of the input's shape. A window
          belongs to the region when the input coordinate of its anchor is
          selected. Later regions win where they overlap; positions in no
          region use the default function.

        **Returns:**

        `.set(func)` returns a new stencil; this one is unchanged.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        F = es.kmap(kernel_size=1, relative=True)
        F = F.at[0].set(lambda x: x[0] ** 2).at[1:].set(lambda x: x[0] ** 3)
        F(jnp.arange(1.0, 5.0))  # [1, 8, 27, 64]
        ```
        """
        return _StencilAt(self)


@eqx.filter_jit
def _compiled_apply(
    stencil: Stencil, array: PyTree[ArrayLike], args: tuple, kwargs: dict
) -> PyTree[Array]:
    """One compiled program per call: called eagerly, a stencil runs as one XLA
    computation instead of dozens of small ones; inside a caller's `jit` it is
    inlined."""
    return stencil._apply(as_fields(array), args, kwargs)


class _StencilAt:
    __slots__ = ("_stencil",)

    def __init__(self, stencil: Stencil) -> None:
        self._stencil = stencil

    def __getitem__(self, index: Any) -> _RegionSetter:
        return _RegionSetter(self._stencil, normalize_region(index))


class _RegionSetter:
    __slots__ = ("_stencil", "_region")

    def __init__(self, stencil: Stencil, region: Region) -> None:
        self._stencil = stencil
        self._region = region

    def set(self, func: Callable) -> Stencil:
        """A new stencil with `func` on this region (later regions win)."""
        _check_func(func)
        stencil = self._stencil
        return dataclasses.replace(
            stencil,
            regions=(*stencil.regions, func),
            region_keys=(*stencil.region_keys, self._region),
        )


def kmap(
    func: Callable | None = None,
    /,
    *,
    kernel_size: IntOrTuple,
    strides: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    relative: bool = False,
    named_axis: dict[int, str] | None = None,
    boundary: str = "constant",
    cval: Cval = 0,
    sharding: NamedSharding | None = None,
) -> Stencil:
    """A stencil map: apply `func` to every window of an array.

    **Arguments:**

    - `func`: the function of one window (plus any extra arguments the stencil
      is called with). Optional: without it, `kmap(...)` is a decorator.
    - `kernel_size`: window size, an int (every dim) or one int per dim; `-1`
      means the whole dim.
    - `strides`: step between windows, int or one per dim.
    - `padding`: int, `"same"`/`"valid"` (any case), or per dim an int, a
      `(lo, hi)` pair or a string. Negative padding crops. `"same"` pads
      `((span-1)//2, span//2)` with `span = dilation*(k-1)+1`.
    - `dilation`: distance between window taps, int or one per dim.
    - `relative`: if `True`, `x[0, 0]` is the window's anchor (tap
      `(k-1)//2`) and offsets run from `-((k-1)//2)` to `k//2`, as in
      `numba.stencil`; otherwise index 0 is the first tap.
    - `named_axis`: `{dim: name}`, so that `x["i+1", "j"]` means `x[1, 0]`.
      Partial naming keeps the other dims positional.
    - `boundary`: how positive padding is filled: `"constant"` (with `cval`),
      `"edge"`, `"reflect"`, `"symmetric"` or `"wrap"` (as in `jnp.pad`).
    - `cval`: the fill value for `boundary="constant"`.
    - `sharding`: `None`, or a `jax.sharding.NamedSharding`: run sharded on its
      mesh (each shard computes its block from a halo exchanged with its
      neighbours), the input constrained to it. Inputs sharded on Explicit mesh
      axes (`jax.set_mesh`) run sharded without it.

    **Returns:**

    An [`eqx_stencil.Stencil`][]. Output length per dim is
    `(n + lo + hi - dilation*(k-1) - 1) // stride + 1`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil as es

    @es.kmap(kernel_size=(3, 3), padding="same", relative=True)
    def laplacian(u):
        return u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]

    laplacian(jnp.ones((4, 4)))  # -2 in the corners, -1 on the edges, 0 inside
    ```
    """
    return Stencil(
        func,
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        dilation=dilation,
        relative=relative,
        named_axis=named_axis,  # pyright: ignore[reportArgumentType]
        boundary=boundary,
        cval=cval,
        sharding=sharding,
    )


def smap(
    func: Callable | None = None,
    /,
    *,
    kernel_size: IntOrTuple = 1,
    strides: IntOrTuple = 1,
    offset: int | tuple[int | tuple[int, int], ...] = 0,
    relative: bool = False,
    named_axis: dict[int, str] | None = None,
    boundary: str = "constant",
    cval: Cval = 0,
    sharding: NamedSharding | None = None,
) -> Stencil:
    """A shape-preserving stencil map (kernex's `smap`).

    The output has the input's shape. The function runs on the windows
    anchored (tap `(k-1)//2`, padding as `"same"`) at the positions inside the
    offset box, every `strides` positions; all other positions keep their input
    values.

    **Arguments:**

    - `func`: the function of one window; optional (decorator form).
    - `kernel_size`, `relative`, `named_axis`, `boundary`, `cval`, `sharding`:
      as in [`eqx_stencil.kmap`][].
    - `strides`: step between the positions the function runs on.
    - `offset`: int, or per dim an int or a `(lo, hi)` pair: the function runs
      on positions `lo .. n-hi-1` of each dim.

    **Returns:**

    An [`eqx_stencil.Stencil`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil as es

    F = es.smap(lambda x: x[0] + x[1], kernel_size=2, relative=True, offset=((2, 0),))
    F(jnp.arange(1, 6))  # [1, 2, 7, 9, 5]
    ```
    """
    return Stencil(
        func,
        kernel_size=kernel_size,
        strides=strides,
        relative=relative,
        named_axis=named_axis,  # pyright: ignore[reportArgumentType]
        boundary=boundary,
        cval=cval,
        offset=offset,  # pyright: ignore[reportArgumentType]
        sharding=sharding,
    )


def kscan(
    func: Callable | None = None,
    /,
    *,
    kernel_size: IntOrTuple,
    strides: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    relative: bool = False,
    named_axis: dict[int, str] | None = None,
    boundary: str = "constant",
    cval: Cval = 0,
    reverse: bool = False,
    sharding: NamedSharding | None = None,
) -> Stencil:
    """A sequential stencil sweep (kernex's `kscan`).

    Windows are visited in row-major order of the output (`reverse=True`: the
    reverse order); each result is written at its window's anchor (tap
    `(k-1)//2`) in the working padded array before the next window is read,
    and the results are returned. One call runs a whole time-marching scheme
    or a Gauss-Seidel sweep. The taps the functions read decide the plan: one
    `lax.scan` step per row when every updated cell they read lies in an
    earlier row, cell by cell otherwise; the result is always the sequential
    one.

    **Arguments:**

    As [`eqx_stencil.kmap`][], plus `reverse`. The functions must return one
    scalar per window.

    **Returns:**

    An [`eqx_stencil.Stencil`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil as es

    cumsum = es.kscan(lambda x: x[-1] + x[0], kernel_size=3, padding=1, relative=True)
    cumsum(jnp.ones(5))  # [1, 2, 3, 4, 5]
    ```
    """
    return dataclasses.replace(
        kmap(
            func,
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            dilation=dilation,
            relative=relative,
            named_axis=named_axis,
            boundary=boundary,
            cval=cval,
            sharding=sharding,
        ),
        scan=True,
        reverse=reverse,
    )


def sscan(
    func: Callable | None = None,
    /,
    *,
    kernel_size: IntOrTuple = 1,
    strides: IntOrTuple = 1,
    offset: int | tuple[int | tuple[int, int], ...] = 0,
    relative: bool = False,
    named_axis: dict[int, str] | None = None,
    boundary: str = "constant",
    cval: Cval = 0,
    reverse: bool = False,
    sharding: NamedSharding | None = None,
) -> Stencil:
    """A shape-preserving sequential sweep (kernex's `sscan`): the windows of
    [`eqx_stencil.smap`][] visited as in [`eqx_stencil.kscan`][].

    **Arguments:**

    As [`eqx_stencil.smap`][], plus `reverse`.

    **Returns:**

    An [`eqx_stencil.Stencil`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil as es

    F = es.sscan(lambda x: x[-1] + x[0], kernel_size=3, relative=True, offset=1)
    F(jnp.ones(5))  # [1, 2, 3, 4, 1]
    ```
    """
    return dataclasses.replace(
        smap(
            func,
            kernel_size=kernel_size,
            strides=strides,
            offset=offset,
            relative=relative,
            named_axis=named_axis,
            boundary=boundary,
            cval=cval,
            sharding=sharding,
        ),
        scan=True,
        reverse=reverse,
    )
