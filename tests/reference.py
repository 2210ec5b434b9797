"""A plain NumPy reference for `kmap`, written from docs/design.md, "The rules".

It loops over output positions, builds each window by explicit indexing of an
explicitly padded array and calls the function on it. It shares no code with
`eqx_stencil`, so the tests compare two independent implementations.

Padding convention for a dim with padding `(lo, hi)`: the input is extended on
each side with a positive pad by `np.pad` in the boundary mode (the extension
of the *whole* input, as `jnp.pad` would give), then a negative pad crops that
many elements from its side.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def per_dim(value: Any, ndim: int) -> tuple:
    """An int (or str) for every dim, or a tuple with one entry per dim."""
    if isinstance(value, (tuple, list)):
        if len(value) != ndim:
            raise ValueError(f"{value!r} does not have {ndim} entries")
        return tuple(value)
    return (value,) * ndim


def resolve_kernel(kernel_size: Any, shape: Sequence[int]) -> tuple[int, ...]:
    """`kernel_size` per dim, with `-1` replaced by the whole dim."""
    kernels = per_dim(kernel_size, len(shape))
    return tuple(n if k == -1 else k for k, n in zip(kernels, shape))


def resolve_padding(
    padding: Any, kernel: Sequence[int], dilation: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """`(lo, hi)` per dim."""
    ndim = len(kernel)
    if isinstance(padding, (tuple, list)):
        if len(padding) != ndim:
            raise ValueError(f"padding {padding!r} does not have {ndim} entries")
        items = list(padding)
    else:
        items = [padding] * ndim
    pads = []
    for item, k, d in zip(items, kernel, dilation):
        span = d * (k - 1) + 1
        if isinstance(item, str):
            if item.lower() == "same":
                pads.append(((span - 1) // 2, span // 2))
            elif item.lower() == "valid":
                pads.append((0, 0))
            else:
                raise ValueError(item)
        elif isinstance(item, (tuple, list)):
            lo, hi = item
            pads.append((int(lo), int(hi)))
        else:
            pads.append((int(item), int(item)))
    return tuple(pads)


def pad_array(
    x: np.ndarray,
    pads: Sequence[tuple[int, int]],
    boundary: str = "constant",
    cval: Any = 0,
) -> np.ndarray:
    """Pad positive sides by `boundary` (np.pad), then crop negative sides."""
    if boundary not in MODES:
        raise ValueError(boundary)
    widths = [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
    if boundary == "constant":
        padded = np.pad(x, widths, mode="constant", constant_values=cval)
    else:
        padded = np.pad(x, widths, mode=boundary)
    crop = tuple(
        slice(max(-lo, 0), padded.shape[dim] - max(-hi, 0))
        for dim, (lo, hi) in enumerate(pads)
    )
    return padded[crop]


def geometry(
    shape: Sequence[int],
    kernel_size: Any,
    strides: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
) -> dict:
    """Resolved per-dim geometry and the output shape."""
    ndim = len(shape)
    kernel = resolve_kernel(kernel_size, shape)
    stride = tuple(per_dim(strides, ndim))
    dil = tuple(per_dim(dilation, ndim))
    pads = resolve_padding(padding, kernel, dil)
    out = []
    for n, k, s, d, (lo, hi) in zip(shape, kernel, stride, dil, pads):
        length = n + lo + hi - d * (k - 1) - 1
        if length < 0:
            raise ValueError("kernel larger than the padded input")
        out.append(length // s + 1)
    return dict(
        kernel=kernel, strides=stride, dilation=dil, pads=pads, out_shape=tuple(out)
    )


def fits(
    shape: Sequence[int],
    kernel_size: Any,
    strides: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
) -> bool:
    """Whether the dilated kernel fits the padded input in every dim."""
    try:
        geometry(shape, kernel_size, strides, padding, dilation)
    except ValueError:
        return False
    return True


def reference_kmap(
    func: Callable[[np.ndarray], Any],
    x: Any,
    kernel_size: Any,
    strides: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    relative: bool = False,
    boundary: str = "constant",
    cval: Any = 0,
) -> np.ndarray:
    """`func` on every window of `x`; shape `out_shape + shape(func(window))`.

    `func` always receives the window as a NumPy array of shape `kernel_size`
    in natural order (index 0 = first tap). For a function written with
    relative offsets wrap it with `relative_func` first; `relative` is accepted
    only to mirror `kmap`'s signature and must then be handled that way.
    """
    del relative  # see docstring: use `relative_func`
    x = np.asarray(x)
    geo = geometry(x.shape, kernel_size, strides, padding, dilation)
    padded = pad_array(x, geo["pads"], boundary, cval)
    results = []
    for position in itertools.product(*(range(n) for n in geo["out_shape"])):
        index = tuple(
            o * s + np.arange(k) * d
            for o, s, k, d in zip(
                position, geo["strides"], geo["kernel"], geo["dilation"]
            )
        )
        window = padded[np.ix_(*index)]
        results.append(np.asarray(func(window)))
    stacked = np.stack(results)
    return stacked.reshape(geo["out_shape"] + stacked.shape[1:])


class RelativeView:
    """A natural-order window indexed by relative offsets (anchor `(k-1)//2`)."""

    def __init__(self, window: np.ndarray) -> None:
        self.window = window

    def __getitem__(self, offsets: Any) -> Any:
        offsets = offsets if isinstance(offsets, tuple) else (offsets,)
        if len(offsets) != self.window.ndim:
            raise IndexError(offsets)
        index = []
        for offset, k in zip(offsets, self.window.shape):
            anchor = (k - 1) // 2
            if not -anchor <= offset <= k - 1 - anchor:
                raise IndexError(f"offset {offset} outside the window of size {k}")
            index.append(offset + anchor)
        return self.window[tuple(index)]


def relative_func(func: Callable[[Any], Any]) -> Callable[[np.ndarray], Any]:
    """Turn a function of a relatively indexed window into one of the window."""
    return lambda window: func(RelativeView(window))
