"""Data regions: masks and label maps given as `jax.Array`s (concrete or traced).

`stencil.at[mask].set(func)` with a boolean `jax.Array` mask, or
`stencil.at[labels].set((f0, f1, ...))` with an integer label map, makes a
region whose extent is *data*: the array is a pytree leaf of the stencil (held
by the region's function entry, a `Masked`), so `jit` does not recompile when
only its values change and `vmap` over a batch of masks is one program. Static
regions (ints, slices, NumPy masks) keep their static boxes.

A label map is the region `...` with `f0` (so it covers every position whose
anchor lies inside the input) followed by one data layer per further label:
label `i` wins where `labels >= i`, so a label below 0 runs `f0` and one above
the last runs the last function (*clamped*).

The lowering rule: **always select**. The static plan (`_regions.stack_data`)
splits every static owner by the data regions that may win over it (those
later in the table, on anchors inside the input); each such stack becomes one
function of the table that evaluates the static owner's function and the
functions of the data layers that may win there, and computes the pick (which
candidate wins, by the masks' values at the window's anchor). Each function is
thus evaluated on the tiles where it may win, never on tiles a later static
region owns. A map's stack returns the pick and every candidate's value (the
owner's own value in the place of a layer that cannot win there: the pick
never names it there), the tiles are assembled candidate by candidate, and
`finish` selects with one `lax.select_n` over the whole output, the
hand-written `jnp.where(mask, obstacle, step(u))`. Selecting last, not tile by
tile, matters: XLA then fuses the tiles' assembly (their concatenation) into
that one selection loop; a per-tile selection left the strip writes as
separate kernels plus a copy of the whole array per step. A sweep (`kscan`)
selects per position, since a later window reads the picked value. The masks
travel as extra (hidden) fields of the problem, read at the anchor tap: the
map lowerings slice them like the input, `kscan` reads them from its working
array at every step (the sweep honours data regions) and the sharded path
exchanges their halos like the input's.

Gradients: a function's windows are passed through
`where(picked, w, stop_gradient(w))`, so a function that is not picked at a
position contributes no gradient to the input there, even if its derivative
is infinite or NaN (the "double where"); gradients with respect to the call's
extra arguments are not guarded (as with a hand-written `jnp.where`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax import lax
from jax.core import Tracer
from jax.sharding import AxisType
from jaxtyping import Array, PyTree, PyTreeDef

from ._problem import Fields, Problem, Table, keep_input, make_table, resolve_table
from ._regions import DataMask, Region, describe, normalize_region, plan, stack_data
from ._window import TapProxy, Window, unwrap_windows


class Masked(eqx.Module):
    """A data region's function entry: its function(s) and the array that
    selects where they run (a pytree leaf, so it is traced, batched and
    never baked into a program). Calling it calls the first function."""

    funcs: tuple[Callable, ...]
    data: Array

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.funcs[0](*args, **kwargs)


def normalize_index(index: Any) -> Region | Array | np.ndarray:
    """A static region normalised (see `normalize_region`), or a data mask or
    label map array, validated by kind (its shape is checked at the call)."""
    if isinstance(index, jax.Array):
        if index.dtype == jnp.bool_ or jnp.issubdtype(index.dtype, jnp.integer):
            return index
        raise TypeError(
            "a region given as a jax.Array must be a boolean mask or an integer "
            f"label map of the input's shape; got dtype {index.dtype}."
        )
    if isinstance(index, np.ndarray) and np.issubdtype(index.dtype, np.integer):
        return index
    return normalize_region(index)


def _check_labels(labels: Array | np.ndarray, count: int) -> None:
    """Concrete labels must lie in `0..count-1` (traced ones are clamped)."""
    if isinstance(labels, Tracer) or labels.size == 0:
        return
    low, high = int(np.min(labels)), int(np.max(labels))
    if low < 0 or high >= count:
        raise ValueError(
            f"a label map with {count} functions takes labels 0..{count - 1}; got "
            f"labels from {low} to {high}. (Traced labels are clamped to that "
            "range instead.)"
        )


def region_entries(
    index: Region | Array | np.ndarray, func: Any
) -> list[tuple[Region, Callable]]:
    """The region table entries `(key, function)` of `.at[index].set(func)`."""
    if not isinstance(index, (jax.Array, np.ndarray)):
        return [(index, _callable(func, "func"))]
    if isinstance(index, jax.Array) and index.dtype == jnp.bool_:
        return [(DataMask(labels=False), Masked((_callable(func, "func"),), index))]
    if not isinstance(func, tuple) or not func:
        raise TypeError(
            "an integer label map takes a non-empty tuple of functions, one per "
            f"label: .at[labels].set((f0, f1, ...)); got {func!r}."
        )
    funcs = tuple(_callable(f, "every label's function") for f in func)
    _check_labels(index, len(funcs))
    if isinstance(index, np.ndarray):  # static: one static mask per label
        return [(normalize_region(index == i), f) for i, f in enumerate(funcs)]
    entries: list[tuple[Region, Callable]] = [((Ellipsis,), funcs[0])]
    if len(funcs) > 1:
        entries.append((DataMask(labels=True), Masked(funcs[1:], index)))
    return entries


def _callable(func: Any, name: str) -> Callable:
    if not callable(func):
        raise TypeError(
            f"{name} must be callable (the function applied to every window); got "
            f"{func!r} of type {type(func).__name__}."
        )
    return func


def _identity(out: PyTree) -> PyTree:
    return out


def resolve_regions(
    problem: Problem,
    funcs: Sequence[Callable | None],
    regions: Sequence[Region],
    frame: Region | None,
    writes_back: bool,
) -> tuple[Problem, Table, Callable[[PyTree], PyTree]]:
    """The problem and table to run (see `_problem.resolve_table`), and the
    function that turns the run's result into the stencil's output. With data
    regions, their arrays are appended to the problem's fields. A map's table
    functions return every candidate's value and the pick, and `finish`
    selects on the whole output; a sweep's select per position (a later window
    reads the picked value) and write the masks back unchanged, which `finish`
    drops."""
    numbers = [n for n, r in enumerate(regions, start=1) if isinstance(r, DataMask)]
    if not numbers:
        return problem, resolve_table(problem, funcs, regions, frame), _identity
    masked = [_masked(funcs[n], regions[n - 1]) for n in numbers]
    fields = problem.fields
    structure = jtu.tree_structure(
        (fields.structure.unflatten([0] * len(fields.arrays)), (0,) * len(masked))
    )
    arrays = (*fields.arrays, *(_encode(m, problem) for m in masked))
    augmented = dataclasses.replace(problem, fields=Fields(arrays, structure))
    static = plan(problem.layouts, regions, funcs[0] is not None, frame)
    stacked, stacks = stack_data(static, problem.layouts, regions)
    bases = (*funcs, keep_input(problem))
    names = [describe(region) for region in (None, *regions, frame)]
    layers = [
        Layer(mask, threshold, f, _layer_name(regions[n - 1], threshold), n)
        for mask, n in enumerate(numbers)
        for threshold, f in enumerate(masked[mask].funcs, start=1)
    ]
    composed: list[Callable | None] = []
    stack_names = []
    for owner, above in stacks:
        composed.append(
            None
            if owner < 0
            else _stacked(
                cast(Callable, bases[owner]),
                names[owner],
                [layer if layer.number in above else None for layer in layers],
                problem,
                writes_back,
            )
        )
        stack_names.append(
            " under ".join([names[n] for n in reversed(above)] + [names[owner]])
        )
    hint = (
        " A data mask region does not count: its values are not known when the "
        "program is built."
    )
    table = make_table(augmented, stacked, composed, stack_names, hint)
    return augmented, table, _first if writes_back else _pick


def _first(out: tuple[PyTree, Any]) -> PyTree:
    return out[0]


def _pick(out: tuple[Array, Sequence[PyTree]]) -> PyTree:
    return _select(*out)


def _layer_name(region: Region, threshold: int) -> str:
    if isinstance(region, DataMask) and region.labels:
        return f"label {threshold} of a label map"
    return describe(region)


def _masked(func: Callable | None, region: Region) -> Masked:
    if not isinstance(func, Masked):
        raise TypeError(
            f"{describe(region)} needs its function entry built by "
            f".at[mask].set(func); got {func!r}."
        )
    return func


def _encode(masked: Masked, problem: Problem) -> Array:
    """The mask as an extra field: a boolean mask as is, labels (or a mask
    whose padding's fill value is not a bool) clipped to `0..len(funcs)` in a
    dtype the fill value fits (the padding is never read)."""
    data, shape = masked.data, problem.fields.shape
    if data.shape != shape:
        raise ValueError(
            f"a data mask or label map must have the input's shape {shape}; got "
            f"{data.shape}."
        )
    values = jnp.asarray(data)
    cval = problem.cval if problem.boundary == "constant" else 0
    if values.dtype == jnp.bool_ and cval in (0, 1):
        dtype = jnp.bool_
    else:
        if values.dtype == jnp.bool_:
            values = values.astype(jnp.int32)
        values = jnp.clip(values, 0, len(masked.funcs))
        if isinstance(cval, (bool, int)) or (
            isinstance(cval, float) and cval.is_integer()
        ):
            dtype = jnp.int32
        elif isinstance(cval, float):
            dtype = jnp.float32
        else:
            dtype = jnp.complex64
    return _sharded_like(values.astype(dtype), problem.fields.arrays[0])


def _sharded_like(values: Array, field: Array) -> Array:
    """`values` resharded like `field` when that is split over Explicit mesh
    axes (the sharded path needs every field split alike)."""
    sharding = jax.typeof(field).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in getattr(mesh, "axis_types", ()):
        return values
    return jax.sharding.reshard(values, sharding.spec)


class Layer(NamedTuple):
    """A data region's function: `func` runs where data mask `mask` (its index
    among the masks) is at least `threshold` (`True` for a boolean mask);
    `number` is the region's place in the table."""

    mask: int
    threshold: int
    func: Callable
    name: str
    number: int


def _stacked(
    base: Callable,
    name: str,
    layers: Sequence[Layer | None],
    problem: Problem,
    writes_back: bool,
) -> Callable:
    """The function of one stack, called on the augmented windows
    `(inputs, masks)`: `base` (named `name`), or the function of the last layer
    whose mask holds at the anchor (`None`: a layer that cannot win here).

    A map's returns the pick and every candidate's value (the base's in the
    place of a layer that cannot win), selected by `finish` on the whole
    output, so that XLA fuses the tiles' assembly into that one selection; a
    sweep's returns the picked value and the masks at the anchor."""
    relative, structure = problem.index.relative, problem.fields.structure
    anchor = tuple(0 if relative else layout.anchor for layout in problem.layouts)
    dtype = jnp.bool_ if len(layers) == 1 else jnp.int32
    names = [name if layer is None else layer.name for layer in (None, *layers)]
    live = [(number, layer) for number, layer in enumerate(layers, 1) if layer]

    def stacked(windows: tuple[PyTree, tuple], *a: Any, **kw: Any) -> PyTree:
        inputs, masks = windows
        which = jnp.zeros((), dtype)
        for number, layer in live:
            value = masks[layer.mask][anchor]
            picked = (
                value
                if value.dtype == jnp.bool_
                else jnp.real(value) >= layer.threshold
            )
            which = jnp.where(picked, jnp.asarray(number, dtype), which)

        def call(func: Callable, number: int) -> PyTree:
            guarded = _guarded(inputs, which == number, structure) if live else inputs
            return unwrap_windows(func(guarded, *a, **kw))

        own = call(base, 0)
        values = [
            own if layer is None else call(layer.func, number)
            for number, layer in enumerate(layers, start=1)
        ]
        candidates = _promoted([own, *values], names)
        if not writes_back:
            return which, candidates
        out = _select(which, candidates) if live else own
        return out, tuple(mask[anchor] for mask in masks)

    return stacked


def _guarded(inputs: PyTree, picked: Array, structure: PyTreeDef) -> PyTree:  # pyright: ignore[reportInvalidTypeForm]
    """The windows, with no gradient at the positions where not `picked`."""

    def guard(value: Any) -> Array:
        return jnp.where(picked, value, lax.stop_gradient(value))

    def window(w: Any) -> Any:
        if isinstance(w, TapProxy):
            lookup = w._lookup  # pyright: ignore[reportPrivateUsage]
            return TapProxy(w._index, lambda tap: guard(lookup(tap)))  # pyright: ignore[reportPrivateUsage]
        return Window(guard(w.array), w._index)  # pyright: ignore[reportPrivateUsage]

    return structure.unflatten([window(w) for w in structure.flatten_up_to(inputs)])


def _promoted(values: Sequence[PyTree], names: Sequence[str]) -> list[PyTree]:
    """The candidates' values at one position, their leaves cast to the dtype
    promoted across candidates; every candidate must return the same shapes."""
    leaves, structure = jtu.tree_flatten(values[0])
    shapes = [jnp.shape(leaf) for leaf in leaves]
    groups = [leaves]
    for value, name in zip(values[1:], names[1:]):
        found, found_structure = jtu.tree_flatten(value)
        found_shapes = [jnp.shape(leaf) for leaf in found]
        if found_structure != structure or found_shapes != shapes:
            raise ValueError(
                f"the functions of {names[0]} and {name} return different output "
                f"shapes per position: {shapes} (structure {structure}) and "
                f"{found_shapes} (structure {found_structure}); every function of "
                "a stencil must return the same shape."
            )
        groups.append(found)
    dtypes = [jnp.result_type(*group) for group in zip(*groups)]
    return [
        structure.unflatten(
            [jnp.asarray(leaf, dtype) for leaf, dtype in zip(group, dtypes)]
        )
        for group in groups
    ]


def _select(which: Array, values: Sequence[PyTree]) -> PyTree:
    """Per position, the value of candidate `which` (a position's pick, or the
    picks of the whole output, whose leaves may have trailing dims)."""

    def select(*cases: Array) -> Array:
        trailing = (1,) * (jnp.ndim(cases[0]) - which.ndim)
        which_ = jnp.broadcast_to(which.reshape(which.shape + trailing), cases[0].shape)
        return lax.select_n(which_, *cases)

    return jtu.tree_map(select, *values)
