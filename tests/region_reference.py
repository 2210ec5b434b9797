"""A plain NumPy reference for region tables (`stencil.at[index].set(func)`).

Written from docs/design.md, "The rules" (Regions), sharing no code with
`eqx_stencil`:

- an index is read against the *input* array's shape with NumPy's own
  indexing (`selected = zeros(shape, bool); selected[index] = True`), so ints,
  negative ints, slices with any step, `...`, tuples of these and boolean
  masks mean exactly what they mean for a NumPy array;
- output position `o` has its anchor at input coordinate
  `o * stride + ((k - 1) // 2) * dilation - lo` in every dim; it belongs to a
  region when that coordinate lies inside the input and is selected;
- later regions win, the default function covers positions in no region;
- each function is called only on the windows of its own positions.

Windows come from `reference.reference_kmap` (the identity function extracts
them), so the padding/boundary rules are the ones the `kmap` tests trust.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from reference import geometry, reference_kmap


NO_OWNER = -1  # in `owner_map`: covered by no region and no default function


def selection(index: Any, shape: Sequence[int]) -> np.ndarray:
    """The input coordinates `index` selects, as a boolean array of `shape`.

    Raises NumPy's `IndexError` for an integer outside the input.
    """
    if isinstance(index, np.ndarray) and index.dtype == np.bool_:
        if index.shape != tuple(shape):
            raise ValueError(f"mask shape {index.shape} != input shape {shape}")
    selected = np.zeros(tuple(shape), dtype=bool)
    selected[index] = True
    return selected


def anchors(
    shape: Sequence[int],
    kernel_size: Any,
    strides: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
) -> list[np.ndarray]:
    """Per dim, the input coordinate of every output position's anchor tap."""
    geo = geometry(shape, kernel_size, strides, padding, dilation)
    return [
        np.arange(out) * s + ((k - 1) // 2) * d - lo
        for out, s, k, d, (lo, _) in zip(
            geo["out_shape"],
            geo["strides"],
            geo["kernel"],
            geo["dilation"],
            geo["pads"],
        )
    ]


def owner_map(
    shape: Sequence[int],
    indices: Sequence[Any],
    has_default: bool,
    kernel_size: Any,
    strides: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
) -> np.ndarray:
    """Owner of every output position: `r + 1` for `indices[r]` (later wins),
    `0` for the default function, `NO_OWNER` when neither covers it."""
    per_dim = anchors(shape, kernel_size, strides, padding, dilation)
    selections = [selection(index, shape) for index in indices]
    out_shape = tuple(len(a) for a in per_dim)
    owners = np.full(out_shape, 0 if has_default else NO_OWNER, dtype=np.int64)
    for position in itertools.product(*(range(n) for n in out_shape)):
        anchor = tuple(int(a[o]) for a, o in zip(per_dim, position))
        if not all(0 <= c < n for c, n in zip(anchor, shape)):
            continue  # an anchor in the padding is selected by no index
        for number, selected in enumerate(selections, start=1):
            if selected[anchor]:
                owners[position] = number
    return owners


def reference_regions(
    default: Callable[[np.ndarray], Any] | None,
    regions: Sequence[tuple[Any, Callable[[np.ndarray], Any]]],
    x: Any,
    kernel_size: Any,
    strides: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    boundary: str = "constant",
    cval: Any = 0,
    dtype: Any = None,
) -> np.ndarray:
    """The region table `regions` (a sequence of `(index, func)`, in `.at`
    order) with default function `default`, applied to `x`.

    Each function receives the window in natural order (index 0 = first tap;
    wrap relative functions with `reference.relative_func`) and is called only
    on the windows of the positions it owns. Results are stacked with `dtype`
    (default: NumPy's promotion of all results). Raises `ValueError` naming
    the first uncovered position when a position has no owner.
    """
    x = np.asarray(x)
    geo = dict(
        kernel_size=kernel_size, strides=strides, padding=padding, dilation=dilation
    )
    owners = owner_map(
        x.shape, [index for index, _ in regions], default is not None, **geo
    )
    uncovered = np.argwhere(owners == NO_OWNER)
    if len(uncovered):
        raise ValueError(
            f"output position {tuple(uncovered[0].tolist())} is covered by no region"
        )
    windows = reference_kmap(lambda w: w, x, boundary=boundary, cval=cval, **geo)
    funcs = [default, *(func for _, func in regions)]
    results = []
    for position in itertools.product(*(range(n) for n in owners.shape)):
        func = funcs[owners[position]]
        assert func is not None
        results.append(np.asarray(func(windows[position])))
    shapes = {r.shape for r in results}
    if len(shapes) != 1:
        raise ValueError(f"functions return different shapes: {sorted(shapes)}")
    dtype = np.result_type(*results) if dtype is None else dtype
    stacked = np.stack([r.astype(dtype) for r in results])
    return stacked.reshape(owners.shape + stacked.shape[1:])
