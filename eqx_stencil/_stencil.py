"""The stencil kinds: the abstract `Stencil` and its final kinds `Map`,
`ShapeMap`, `Scan` and `ShapeScan`, with their constructors.

Each kind holds only the fields that apply to it (a shape-preserving kind has
an `offset` and no `padding`; only the sweeps have `reverse`), so a field that
would be ignored cannot be set. Every kind is applied by the same path,
`Stencil._apply`: fields -> problem -> region table -> the kind's `_run`.
"""

from __future__ import annotations

import abc
import dataclasses
import functools as ft
from collections.abc import Callable
from typing import Any, final

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.sharding import NamedSharding
from jaxtyping import Array, ArrayLike, PyTree, ScalarLike

from ._call import run
from ._data_regions import normalize_index, region_entries, resolve_regions
from ._geometry import (
    BoolLike,
    Cval,
    Geometry,
    IntLike,
    IntOrTuple,
    IntsLike,
    Offset,
    OffsetLike,
    Padding,
    PaddingLike,
    check_bool,
    is_int,
    normalize_boundary,
    normalize_cval,
    normalize_ints,
    normalize_named_axis,
    normalize_offset,
    normalize_padding,
    out_shape,
)
from ._indexing import WindowIndex
from ._lower import lower
from ._problem import Fields, Problem, Table, as_fields, resolve_table
from ._regions import DataMask, Mask, Region
from ._scan import sweep
from ._shard import check_sharding, find_sharding, run_sharded


def _check_func(func: Any, name: str = "func") -> Any:
    if func is not None and not callable(func):
        raise TypeError(
            f"{name} must be callable (the function applied to every window); got "
            f"{func!r} of type {type(func).__name__}."
        )
    return func


def _check_regions(regions: Any) -> tuple[Callable, ...]:
    if not isinstance(regions, tuple):
        raise TypeError(
            "regions must be a tuple of functions (set them with "
            f".at[index].set(func)); got {regions!r}."
        )
    return tuple(_check_func(func, "every region's function") for func in regions)


def _is_region(key: Any) -> bool:
    def entry(item: Any) -> bool:
        if isinstance(item, tuple):  # a slice's (start, stop, step)
            return len(item) == 3 and all(b is None or is_int(b) for b in item)
        return item is Ellipsis or is_int(item)

    return isinstance(key, (Mask, DataMask)) or (
        isinstance(key, tuple) and all(entry(item) for item in key)
    )


def _check_region_keys(keys: Any) -> tuple[Region, ...]:
    if not isinstance(keys, tuple) or not all(_is_region(key) for key in keys):
        raise TypeError(
            "region_keys must be a tuple of normalised region indices (set them "
            f"with .at[index].set(func)); got {keys!r}."
        )
    return keys


def _is_function(value: Any) -> bool:
    """The decorator form's argument: a callable holding no array (a callable
    Module of arrays is input fields, or a function given as `func=`)."""
    return callable(value) and not any(
        eqx.is_array(leaf) for leaf in jtu.tree_leaves(value)
    )


class Stencil(eqx.Module):
    """A stencil operator: window geometry and the function applied to windows.

    The abstract base of the four kinds, each built by its constructor:
    [`eqx_stencil.Map`][] ([`eqx_stencil.kmap`][]), [`eqx_stencil.ShapeMap`][]
    ([`eqx_stencil.smap`][]), [`eqx_stencil.Scan`][] ([`eqx_stencil.kscan`][])
    and [`eqx_stencil.ShapeScan`][] ([`eqx_stencil.sscan`][]). A stencil is
    immutable: calling it never changes it, so it can be called, traced,
    `jit`ted and differentiated any number of times; `dataclasses.replace`
    gives a changed copy (its arguments are validated as the constructor's). The
    function is a module field, so a function that is itself an `eqx.Module`
    (holding arrays) is part of the pytree and gets gradients with
    `eqx.filter_grad`.

    Calling it:

    - `stencil(array, *args, **kwargs)` applies the function to every window of
      `array` and returns an array of shape `out_shape + S`, where `S` is the
      shape the function returns. `args`/`kwargs` are passed unchanged to every
      window's function (weights, coefficients) and are differentiable.
    - `stencil(fields)` with a pytree of same-shape arrays gives the function
      the same pytree of windows (multi-field stencils).
    - `stencil(func)`, on a stencil built without a function, returns a new
      stencil with `func` as its function (the decorator form), when `func` is
      callable and holds no array. (A callable `eqx.Module` holding arrays is
      taken as input fields; give such a function as `es.kmap(func, ...)`.)

    Called outside a trace, a stencil runs as one compiled program, traced anew
    at every call so that it reads the current values of globals, closures and
    arguments, as any eager JAX function does; programs are compiled once and
    reused while the traced program is unchanged. Under `jit`, `vmap`, `grad` or
    `scan` it is inlined in the caller's program.

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
    relative: bool = eqx.field(
        static=True, default=False, converter=ft.partial(check_bool, "relative")
    )
    named_axis: tuple[tuple[int, str], ...] | None = eqx.field(
        static=True, default=None, converter=normalize_named_axis
    )
    boundary: str = eqx.field(
        static=True, default="constant", converter=normalize_boundary
    )
    cval: Cval = eqx.field(static=True, default=0, converter=normalize_cval)
    sharding: NamedSharding | None = eqx.field(
        static=True, default=None, converter=check_sharding
    )
    regions: tuple[Callable, ...] = eqx.field(default=(), converter=_check_regions)
    region_keys: tuple[Region, ...] = eqx.field(
        static=True, default=(), converter=_check_region_keys
    )

    def __check_init__(self) -> None:
        if len(self.regions) != len(self.region_keys):
            raise ValueError(
                f"a stencil needs one region key per region function; got "
                f"{len(self.region_keys)} keys for {len(self.regions)} functions "
                "(set regions with .at[index].set(func))."
            )
        _ = self._geometry  # validates that tuple arguments agree in length

    @property
    @abc.abstractmethod
    def _geometry(self) -> Geometry:
        """The window geometry, not yet tied to an array's rank."""

    @abc.abstractmethod
    def _frame(self, shape: tuple[int, ...]) -> Region | None:
        """The box where the functions apply (outside it the input is kept),
        or `None`: everywhere."""

    @abc.abstractmethod
    def _run(self, problem: Problem, table: Table) -> PyTree[Array]:
        """Apply a resolved region table: map or sweep."""

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
          windows (`def f(w): u, v = w; ...`). On a stencil without a function,
          a callable holding no array (with no other arguments) gives a new
          stencil with it as the function: `es.kmap(kernel_size=3)(f)`.
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
        if self.func is None and not args and not kwargs and _is_function(array):
            return dataclasses.replace(self, func=array)
        if self.func is not None and _is_function(array):
            raise TypeError(
                "a stencil is applied to arrays, but got a callable holding no array "
                f"(of type {type(array).__name__}) and this stencil already has a "
                "function: to change it use dataclasses.replace(stencil, func=f)."
            )

        def apply() -> PyTree[Array]:
            return self._apply(as_fields(array), args, kwargs)

        return run(apply, (self, array, args, kwargs))

    def _apply(self, fields: Fields, args: tuple, kwargs: dict) -> PyTree[Array]:
        """Every kind's one path: fields -> problem -> region table -> run."""
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
        if 0 in out_shape(layouts):
            return self._empty(problem)
        if self.func is None:
            _check_anchors_in_input(problem)
        funcs = (self.func, *self.regions)
        sweep = isinstance(self, (Scan, ShapeScan))
        problem, table, finish = resolve_regions(
            problem, funcs, self.region_keys, self._frame(fields.shape), sweep
        )
        sharded = find_sharding(self.sharding, fields)
        if sharded is not None:
            reverse = self.reverse if sweep else None
            return finish(run_sharded(sharded, problem, table, self._run, reverse))
        return finish(self._run(problem, table))

    def _empty(self, problem: Problem) -> PyTree[Array]:
        """An output with a zero-length dim. Its trailing shape and dtype are
        what the function returns on one window (of zeros)."""
        kernel = tuple(layout.kernel for layout in problem.layouts)
        zeros = tuple(jnp.zeros(kernel, a.dtype) for a in problem.fields.arrays)
        one = dataclasses.replace(
            problem,
            fields=Fields(zeros, problem.fields.structure),
            layouts=Geometry(kernel, 1, 0, 1).layout(kernel),
        )
        func = next(f for f in (self.func, *self.regions) if f is not None)
        value = jax.eval_shape(lambda: self._run(one, resolve_table(one, (func,), ())))
        shape = out_shape(problem.layouts)
        return jtu.tree_map(
            lambda v: jnp.zeros(shape + v.shape[len(shape) :], v.dtype), value
        )

    @property
    def at(self) -> _StencilAt:
        """Functional region update: `stencil.at[index].set(func)`.

        **Arguments:**

        - `index`: ints, slices (any step, negative bounds), `...`, tuples of
          these, or a static NumPy boolean mask of the input's shape. A window
          belongs to the region when the input coordinate of its anchor is
          selected. Later regions win where they overlap; positions in no
          region use the default function.
        - *Data regions*: a boolean `jax.Array` mask of the input's shape
          (concrete or traced) is a region whose extent is data: it is part of
          the stencil's pytree, so under `jit` new mask values reuse the
          compiled program and `vmap` over masks is one program. Its positions
          do not count as covered when checking that every position has a
          function (give a default or static regions).
        - *Label maps*: an integer array of the input's shape with a tuple of
          functions, `.at[labels].set((f0, f1, ...))`: label `i` runs `fi`,
          and every position whose anchor lies inside the input is covered. A
          `jax.Array` map is data; a NumPy one is one static mask per label.
          Concrete labels outside `0..len(funcs)-1` are a `ValueError`; traced
          ones are clamped into that range.

        **Returns:**

        `.set(func)` returns a new stencil; this one is unchanged.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        F = es.kmap(kernel_size=1, relative=True)
        F = F.at[0].set(lambda x: x[0] ** 2).at[1:].set(lambda x: x[0] ** 3)
        F(jnp.arange(1.0, 5.0))  # [1, 8, 27, 64]

        wall = jnp.array([False, True, True, False])  # data: may be traced
        F.at[wall].set(lambda x: 0.0)(jnp.arange(1.0, 5.0))  # [1, 0, 0, 64]
        labels = jnp.array([0, 1, 1, 0])
        G = es.kmap(kernel_size=1, relative=True)
        G = G.at[labels].set((lambda x: x[0], lambda x: -x[0]))
        G(jnp.ones(4))  # [1, -1, -1, 1]
        ```
        """
        return _StencilAt(self)


def _check_anchors_in_input(problem: Problem) -> None:
    """Without a default function every position needs a region, and regions
    select anchors by input coordinate: an anchor in the padding has none."""
    for dim, layout in enumerate(problem.layouts):
        first, last = layout.anchor_input(0), layout.anchor_input(layout.out - 1)
        if first >= 0 and last < layout.size:
            continue
        o = 0 if first < 0 else (layout.size - first - 1) // layout.stride + 1
        position = tuple(o if d == dim else 0 for d in range(len(problem.layouts)))
        coordinate = first + o * layout.stride
        raise ValueError(
            f"output position {position} is covered by no region and the stencil "
            "has no default function: its window's anchor lies in the padding "
            f"(input coordinate {coordinate} in dim {dim}, input length "
            f"{layout.size}), where no region index reaches. Give a default "
            "function (es.kmap(func, ...)), or use less padding."
        )


class _StencilAt:
    __slots__ = ("_stencil",)

    def __init__(self, stencil: Stencil) -> None:
        self._stencil = stencil

    def __getitem__(self, index: Any) -> _RegionSetter:
        return _RegionSetter(self._stencil, normalize_index(index))


class _RegionSetter:
    __slots__ = ("_stencil", "_region")

    def __init__(self, stencil: Stencil, region: Any) -> None:
        self._stencil = stencil
        self._region = region

    def set(self, func: Callable | tuple[Callable, ...]) -> Stencil:
        """A new stencil with `func` on this region (later regions win); for a
        label map, a tuple of functions, one per label."""
        keys, funcs = zip(*region_entries(self._region, func))
        stencil = self._stencil
        return dataclasses.replace(
            stencil,
            regions=(*stencil.regions, *funcs),
            region_keys=(*stencil.region_keys, *keys),
        )


class _Windowed(Stencil):
    """Kinds whose output grid is the windows of the padded input."""

    padding: Padding = eqx.field(static=True, default=0, converter=normalize_padding)
    dilation: IntOrTuple = eqx.field(
        static=True, default=1, converter=ft.partial(normalize_ints, "dilation")
    )

    @property
    def _geometry(self) -> Geometry:
        return Geometry(self.kernel_size, self.strides, self.padding, self.dilation)

    def _frame(self, shape: tuple[int, ...]) -> Region | None:
        return None


class _ShapePreserving(Stencil):
    """Kinds whose output has the input's shape: the functions run on the
    anchors inside the offset box, every `strides`; the rest keep the input."""

    offset: Offset = eqx.field(static=True, default=0, converter=normalize_offset)

    @property
    def _geometry(self) -> Geometry:
        return Geometry(self.kernel_size, 1, "same", 1)

    def _frame(self, shape: tuple[int, ...]) -> Region:
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


@final
class Map(_Windowed):
    """A stencil map, built by [`eqx_stencil.kmap`][]: the function of every
    window of the padded input. Fields: those of [`eqx_stencil.Stencil`][] plus
    `padding` and `dilation`.

    **Example:**

    ```python
    import dataclasses
    import eqx_stencil as es

    diff = es.kmap(lambda u: u[1] - u[0], kernel_size=2)
    assert isinstance(diff, es.Map) and isinstance(diff, es.Stencil)
    wide = dataclasses.replace(diff, dilation=2)  # a changed copy, checked
    ```
    """

    def _run(self, problem: Problem, table: Table) -> PyTree[Array]:
        return lower(problem, table)


@final
class Scan(_Windowed):
    """A sequential sweep, built by [`eqx_stencil.kscan`][]. Fields: those of
    [`eqx_stencil.Map`][] plus `reverse`.

    **Example:**

    ```python
    import dataclasses
    import jax.numpy as jnp
    import eqx_stencil as es

    cumsum = es.kscan(lambda x: x[1] + x[0], kernel_size=3, padding=1, relative=True)
    cumsum(jnp.ones(4))  # [2, 2, 2, 1]: left to right, reads the input ahead
    backwards = dataclasses.replace(cumsum, reverse=True)
    backwards(jnp.ones(4))  # [4, 3, 2, 1]
    ```
    """

    reverse: bool = eqx.field(
        static=True, default=False, converter=ft.partial(check_bool, "reverse")
    )

    def _run(self, problem: Problem, table: Table) -> PyTree[Array]:
        return sweep(problem, table, self.reverse)


@final
class ShapeMap(_ShapePreserving):
    """A shape-preserving map, built by [`eqx_stencil.smap`][]. Fields: those of
    [`eqx_stencil.Stencil`][] plus `offset`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil as es

    interior = es.smap(lambda u: 2 * u[0], relative=True, offset=1)
    assert isinstance(interior, es.ShapeMap)
    interior(jnp.ones(4))  # [1, 2, 2, 1]
    ```
    """

    def _run(self, problem: Problem, table: Table) -> PyTree[Array]:
        return lower(problem, table)


@final
class ShapeScan(_ShapePreserving):
    """A shape-preserving sweep, built by [`eqx_stencil.sscan`][]. Fields: those
    of [`eqx_stencil.ShapeMap`][] plus `reverse`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil as es

    F = es.sscan(lambda x: x[1] + x[0], kernel_size=3, relative=True, offset=1,
                 reverse=True)
    assert isinstance(F, es.ShapeScan)
    F(jnp.ones(5))  # [1, 4, 3, 2, 1]
    ```
    """

    reverse: bool = eqx.field(
        static=True, default=False, converter=ft.partial(check_bool, "reverse")
    )

    def _run(self, problem: Problem, table: Table) -> PyTree[Array]:
        return sweep(problem, table, self.reverse)


def kmap(
    func: Callable | None = None,
    /,
    *,
    kernel_size: IntsLike,
    strides: IntsLike = 1,
    padding: PaddingLike = 0,
    dilation: IntsLike = 1,
    relative: BoolLike = False,
    named_axis: dict[IntLike, str] | None = None,
    boundary: str = "constant",
    cval: ScalarLike = 0,
    sharding: NamedSharding | None = None,
) -> Map:
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
    - `cval`: the fill value for `boundary="constant"`: a number (Python or
      NumPy scalar, or 0-d array) representable in the input's dtype.
    - `sharding`: `None`, or a `jax.sharding.NamedSharding`: run sharded on its
      mesh (each shard computes its block from a halo exchanged with its
      neighbours), the input constrained to it. Inputs sharded on Explicit mesh
      axes (`jax.set_mesh`) run sharded without it.

    Ints may be NumPy ints, flags NumPy bools.

    **Returns:**

    An [`eqx_stencil.Map`][]. Output length per dim is
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
    return Map(
        func,
        kernel_size=kernel_size,  # pyright: ignore[reportArgumentType]
        strides=strides,  # pyright: ignore[reportArgumentType]
        padding=padding,  # pyright: ignore[reportArgumentType]
        dilation=dilation,  # pyright: ignore[reportArgumentType]
        relative=relative,  # pyright: ignore[reportArgumentType]
        named_axis=named_axis,  # pyright: ignore[reportArgumentType]
        boundary=boundary,
        cval=cval,  # pyright: ignore[reportArgumentType]
        sharding=sharding,
    )


def smap(
    func: Callable | None = None,
    /,
    *,
    kernel_size: IntsLike = 1,
    strides: IntsLike = 1,
    offset: OffsetLike = 0,
    relative: BoolLike = False,
    named_axis: dict[IntLike, str] | None = None,
    boundary: str = "constant",
    cval: ScalarLike = 0,
    sharding: NamedSharding | None = None,
) -> ShapeMap:
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

    An [`eqx_stencil.ShapeMap`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil as es

    F = es.smap(lambda x: x[0] + x[1], kernel_size=2, relative=True, offset=((2, 0),))
    F(jnp.arange(1, 6))  # [1, 2, 7, 9, 5]
    ```
    """
    return ShapeMap(
        func,
        kernel_size=kernel_size,  # pyright: ignore[reportArgumentType]
        strides=strides,  # pyright: ignore[reportArgumentType]
        offset=offset,  # pyright: ignore[reportArgumentType]
        relative=relative,  # pyright: ignore[reportArgumentType]
        named_axis=named_axis,  # pyright: ignore[reportArgumentType]
        boundary=boundary,
        cval=cval,  # pyright: ignore[reportArgumentType]
        sharding=sharding,
    )


def kscan(
    func: Callable | None = None,
    /,
    *,
    kernel_size: IntsLike,
    strides: IntsLike = 1,
    padding: PaddingLike = 0,
    dilation: IntsLike = 1,
    relative: BoolLike = False,
    named_axis: dict[IntLike, str] | None = None,
    boundary: str = "constant",
    cval: ScalarLike = 0,
    reverse: BoolLike = False,
    sharding: NamedSharding | None = None,
) -> Scan:
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

    As [`eqx_stencil.kmap`][], plus `reverse` (a bool). The functions must
    return one scalar per window.

    **Returns:**

    An [`eqx_stencil.Scan`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil as es

    cumsum = es.kscan(lambda x: x[-1] + x[0], kernel_size=3, padding=1, relative=True)
    cumsum(jnp.ones(5))  # [1, 2, 3, 4, 5]
    ```
    """
    return Scan(
        func,
        kernel_size=kernel_size,  # pyright: ignore[reportArgumentType]
        strides=strides,  # pyright: ignore[reportArgumentType]
        padding=padding,  # pyright: ignore[reportArgumentType]
        dilation=dilation,  # pyright: ignore[reportArgumentType]
        relative=relative,  # pyright: ignore[reportArgumentType]
        named_axis=named_axis,  # pyright: ignore[reportArgumentType]
        boundary=boundary,
        cval=cval,  # pyright: ignore[reportArgumentType]
        reverse=reverse,  # pyright: ignore[reportArgumentType]
        sharding=sharding,
    )


def sscan(
    func: Callable | None = None,
    /,
    *,
    kernel_size: IntsLike = 1,
    strides: IntsLike = 1,
    offset: OffsetLike = 0,
    relative: BoolLike = False,
    named_axis: dict[IntLike, str] | None = None,
    boundary: str = "constant",
    cval: ScalarLike = 0,
    reverse: BoolLike = False,
    sharding: NamedSharding | None = None,
) -> ShapeScan:
    """A shape-preserving sequential sweep (kernex's `sscan`): the windows of
    [`eqx_stencil.smap`][] visited as in [`eqx_stencil.kscan`][].

    **Arguments:**

    As [`eqx_stencil.smap`][], plus `reverse` (a bool).

    **Returns:**

    An [`eqx_stencil.ShapeScan`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqx_stencil as es

    F = es.sscan(lambda x: x[-1] + x[0], kernel_size=3, relative=True, offset=1)
    F(jnp.ones(5))  # [1, 2, 3, 4, 1]
    ```
    """
    return ShapeScan(
        func,
        kernel_size=kernel_size,  # pyright: ignore[reportArgumentType]
        strides=strides,  # pyright: ignore[reportArgumentType]
        offset=offset,  # pyright: ignore[reportArgumentType]
        relative=relative,  # pyright: ignore[reportArgumentType]
        named_axis=named_axis,  # pyright: ignore[reportArgumentType]
        boundary=boundary,
        cval=cval,  # pyright: ignore[reportArgumentType]
        reverse=reverse,  # pyright: ignore[reportArgumentType]
        sharding=sharding,
    )
