"""The data model of one application of a stencil: fields, problem, table.

`Stencil.__call__` turns its input into `Fields` (`as_fields`), ties them to
the stencil's geometry and the call's arguments in a `Problem`, and resolves
the region table against it (`resolve_table`: the static owner plan of
`_regions.plan`, plus every owner's function and the taps it reads). The
lowerings (`_lower.py`, `_scan.py`) read everything from these two objects:
the `Problem` says which piece of the (virtually) padded input a box of outputs
reads (`source_range`, `sources`), the `Table` which function runs where.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, cast

import equinox as eqx
import jax
import jax.extend.core as jex
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, PyTree, PyTreeDef

from ._boundary import padded_box
from ._geometry import Cval, DimLayout
from ._indexing import WindowIndex
from ._regions import Box, Plan, Region, describe, plan
from ._unroll import interpret
from ._window import NeedsWindow, TapProxy


# A tap read by a function: (field, window index), `field` numbering the leaves
# of the stencil's input (0 for a plain array).
Tap = tuple[int, tuple[int, ...]]
Taps = tuple[Tap, ...]


@dataclasses.dataclass(frozen=True)
class Fields:
    """The stencil's input: the leaves of a pytree of same-shape arrays (one
    leaf, structure `*`, for a plain array)."""

    arrays: tuple[Array, ...]
    structure: PyTreeDef  # pyright: ignore[reportInvalidTypeForm]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.arrays[0].shape


def as_fields(tree: PyTree[ArrayLike], name: str = "array") -> Fields:
    """Validate the input: a non-empty pytree of arrays of one shape."""
    leaves, structure = jtu.tree_flatten(tree)
    if not leaves:
        raise ValueError(
            f"{name} must be an array or a pytree of same-shape arrays; got "
            f"{tree!r}, which holds no array."
        )
    for path, leaf in jtu.tree_flatten_with_path(tree)[0]:
        if not isinstance(leaf, (jax.Array, np.ndarray)) and not hasattr(
            leaf, "__jax_array__"
        ):
            raise TypeError(
                f"{name} must be an array or a pytree (tuple, list, dict, Module) of "
                f"same-shape arrays, its fields; got {type(tree).__name__} whose "
                f"leaf {jtu.keystr(path) or 'root'} is {leaf!r} of type "
                f"{type(leaf).__name__}, not an array. A list of numbers is a "
                "pytree of scalar fields: for one array pass jnp.asarray(...)."
            )
    arrays = tuple(jnp.asarray(leaf) for leaf in leaves)
    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
        paths = [jtu.keystr(path) for path, _ in jtu.tree_flatten_with_path(tree)[0]]
        found = ", ".join(f"{p or 'root'}: {a.shape}" for p, a in zip(paths, arrays))
        raise ValueError(
            f"every field of {name} must have the same shape; got {found}."
        )
    return Fields(arrays, structure)


def tap_proxies(
    fields: Fields, index: WindowIndex, lookup: Callable[[Tap], Any]
) -> PyTree:
    """One `TapProxy` per field, in the fields' structure: `x[i, j]` of field
    `f` is `lookup((f, (i, j)))`."""
    proxies = [
        TapProxy(index, lambda tap, f=f: lookup((f, tap)))
        for f in range(fields.structure.num_leaves)
    ]
    return fields.structure.unflatten(proxies)


# A program holds its windows as object arrays of planes, one entry per tap
# (`TapProgram.apply`): above this many taps per field (a kernel spanning a
# large input, of which the function reads a few taps), the function runs
# under `vmap` instead.
MAX_PROGRAM_TAPS = 2**16


@dataclasses.dataclass(frozen=True)
class TapProgram:
    """A function that reads only taps, traced once (`record`): `closed` maps
    one window per field (shape `kernel_size`) and the call's array arguments
    (`dynamic_tree`'s leaves) to its output leaves (`out_tree`). Evaluated on
    planes (`apply`), it is the shift lowering without tracing the function
    again for every box."""

    closed: jex.ClosedJaxpr
    dynamic_tree: PyTreeDef  # pyright: ignore[reportInvalidTypeForm]
    out_tree: PyTreeDef  # pyright: ignore[reportInvalidTypeForm]

    def apply(
        self, taps: Taps, planes: Sequence[Array], args: tuple, kwargs: dict
    ) -> PyTree[Array] | None:
        """The function at every position, tap `taps[i]` read from `planes[i]`;
        `None` where the interpreter has no exact rule (`_unroll.interpret`) or
        the call's arguments are not those it was traced with (a shard's)."""
        leaves, tree = jtu.tree_flatten(_dynamic(args, kwargs))
        if tree != self.dynamic_tree:
            return None
        in_avals = self.closed.in_avals
        fields = len(in_avals) - len(leaves)
        window_avals, leaf_avals = in_avals[:fields], in_avals[fields:]
        if any(
            (jnp.shape(leaf), leaf.dtype) != (aval.shape, aval.dtype)
            for leaf, aval in zip(leaves, leaf_avals)
        ):
            return None
        if any(aval.size > MAX_PROGRAM_TAPS for aval in window_avals):
            return None
        windows = [np.empty(aval.shape, dtype=object) for aval in window_avals]
        for (f, tap), plane in zip(taps, planes):
            if plane.dtype != window_avals[f].dtype:
                return None
            windows[f][tap] = plane
        outs = interpret(self.closed, windows, leaves)
        return None if outs is None else jtu.tree_unflatten(self.out_tree, outs)


def _dynamic(args: tuple, kwargs: dict) -> PyTree:
    """The call's array arguments (the rest is static)."""
    return eqx.filter((args, kwargs), eqx.is_array)


def record(
    func: Callable, index: WindowIndex, fields: Fields, args: tuple, kwargs: dict
) -> tuple[Taps, TapProgram | None] | None:
    """The taps `func` reads and `func` traced on them (`None` if it has
    effects: it then runs under `vmap`); or `None` when it uses its window as a
    whole."""
    seen: dict[Tap, Array] = {}
    dynamic, static = eqx.partition((args, kwargs), eqx.is_array)
    out_tree: list[PyTreeDef] = []  # pyright: ignore[reportInvalidTypeForm]

    def run(windows: list[Array], dynamic: PyTree) -> list:
        def lookup(tap: Tap) -> Array:
            if tap not in seen:
                f, at = tap
                piece = lax.slice(windows[f], at, [i + 1 for i in at])
                seen[tap] = lax.reshape(piece, ())
            return seen[tap]

        args, kwargs = eqx.combine(dynamic, static)
        out = func(tap_proxies(fields, index, lookup), *args, **kwargs)
        leaves, tree = jtu.tree_flatten(out)
        if any(isinstance(leaf, TapProxy) for leaf in leaves):
            raise NeedsWindow  # returns the window itself (patches)
        out_tree.append(tree)
        return leaves

    windows = [jax.ShapeDtypeStruct(index.kernel, a.dtype) for a in fields.arrays]
    try:
        closed = jax.make_jaxpr(run)(windows, dynamic)
    except (NeedsWindow, TypeError, ValueError, AttributeError):
        # Whole-window use (`jnp.sum(x)` fails in JAX before our signal can be
        # raised). The window lowering runs the function on real windows, so a
        # genuine error in the function surfaces there.
        return None
    if closed.effects:
        return tuple(seen), None
    dynamic_tree = jtu.tree_structure(dynamic)
    return tuple(seen), TapProgram(closed, dynamic_tree, out_tree[0])


@dataclasses.dataclass(frozen=True)
class Problem:
    """One application of a stencil: the input fields, their layout, the
    window's index rules, the boundary fill and the call's extra arguments.

    Output box `box` (per dim `[start, stop)` of output positions) reads the
    padded coordinates `source_range(box)`; `sources(box)` is that piece of
    every field, padded by the boundary mode without padding the whole input.
    """

    fields: Fields
    layouts: tuple[DimLayout, ...]
    index: WindowIndex
    boundary: str
    cval: Cval
    args: tuple
    kwargs: dict

    @property
    def fuse_tiles(self) -> bool:
        """Whether one function everywhere may be lowered as a whole: one
        contraction or convolution, the row lowering, or its interior and
        boundary strips assembled as one loop (`_lower.lower`). A shard's
        problem says no where its interior must not wait for the halos."""
        return True

    @property
    def anchor_key(self) -> tuple[int, ...]:
        """The key that reads a window's anchor tap (relative or absolute)."""
        relative = self.index.relative
        return tuple(0 if relative else layout.anchor for layout in self.layouts)

    def record(self, func: Callable) -> tuple[Taps, TapProgram | None] | None:
        """The taps `func` reads and its program (see `record`)."""
        return record(func, self.index, self.fields, self.args, self.kwargs)

    def source_range(self, box: Box) -> Box:
        """The padded coordinates `[start, stop)` per dim that the windows of
        the outputs in `box` read."""
        return tuple(
            layout.source(start, stop)
            for (start, stop), layout in zip(box, self.layouts)
        )

    def padded(self, box: Sequence[tuple[int, int]]) -> list[Array]:
        """Every field's piece `box` (padded coordinates) of the padded input."""
        return [
            padded_box(x, self.layouts, box, self.boundary, self.cval)
            for x in self.fields.arrays
        ]

    def sources(self, box: Box) -> list[Array]:
        """Every field's piece of the padded input read by the outputs in `box`."""
        return self.padded(self.source_range(box))

    def precomputed(self, box: Box, func: Callable) -> PyTree[Array] | None:
        """`func`'s values on `box` if they were computed before, else `None`
        (a shard's interior: see `_halo.HaloProblem`)."""
        del box, func
        return None


def keep_input(problem: Problem) -> Callable:
    """The function returning a window's anchor tap: its input value(s)."""
    anchor, structure = problem.anchor_key, problem.fields.structure

    def keep(windows: PyTree, *args: Any, **kwargs: Any) -> PyTree:
        del args, kwargs  # the call's extra arguments, unused
        values = [window[anchor] for window in structure.flatten_up_to(windows)]
        return structure.unflatten(values)

    return keep


@dataclasses.dataclass(frozen=True)
class Table:
    """A region table resolved against a problem: the static owner plan, and
    for every owner present its function, taps (`None`: it reads its window as
    a whole), program (`None`: none, it runs under `vmap`) and name."""

    plan: Plan
    funcs: dict[int, Callable]
    taps: dict[int, Taps | None]
    programs: dict[int, TapProgram | None]
    names: dict[int, str]


def resolve_table(
    problem: Problem,
    funcs: Sequence[Callable | None],
    regions: Sequence[Region],
    frame: Region | None = None,
) -> Table:
    """`funcs[0]` is the default function (or `None`), `funcs[r + 1]` the
    function of `regions[r]`. With a `frame`, positions outside it keep their
    input value (the window's anchor tap)."""
    owners = plan(problem.layouts, regions, funcs[0] is not None, frame)
    funcs = (*funcs, keep_input(problem))
    names = [describe(region) for region in (None, *regions, frame)]
    return make_table(problem, owners, funcs, names)


def make_table(
    problem: Problem,
    owners: Plan,
    funcs: Sequence[Callable | None],
    names: Sequence[str],
    hint: str = "",
) -> Table:
    """The table of `owners`' owners: owner `o` runs `funcs[o]`, named
    `names[o]`. A position owned by none (`-1`) is an error naming it (`hint`
    appended)."""
    uncovered = np.argwhere(owners.owners < 0)
    if len(uncovered):
        position = owners.position(uncovered[0])
        raise ValueError(
            f"output position {position} is covered by no region and the stencil "
            "has no default function: add a region covering it with "
            f".at[index].set(func), or give a default function.{hint}"
        )
    present = [int(owner) for owner in np.unique(owners.owners)]
    used = {owner: cast(Callable, funcs[owner]) for owner in present}
    records = {owner: problem.record(func) for owner, func in used.items()}
    return Table(
        plan=owners,
        funcs=used,
        taps={owner: None if r is None else r[0] for owner, r in records.items()},
        programs={owner: None if r is None else r[1] for owner, r in records.items()},
        names={owner: names[owner] for owner in present},
    )
