"""Kernel geometry: validation of the user's arguments and the per-dim layout.

Everything here is static Python: it runs at trace time and raises the
package's argument errors.
"""

from __future__ import annotations

import dataclasses
import functools as ft
import operator
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.core import Tracer


BOUNDARY_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")

# The normalised forms, as stored in a stencil's static fields.
IntOrTuple = int | tuple[int, ...]
PaddingDim = int | str | tuple[int, int]
Padding = int | str | tuple[PaddingDim, ...]
Offset = int | tuple[tuple[int, int], ...]
Cval = bool | int | float | complex

# The forms the constructors accept (NumPy scalars, lists).
IntLike = int | np.integer | jax.Array  # a JAX int: concrete, 0-d
IntsLike = IntLike | Sequence[IntLike]
PaddingLike = IntLike | str | Sequence[IntLike | str | Sequence[IntLike]]
OffsetLike = IntLike | Sequence[IntLike | Sequence[IntLike]]
BoolLike = bool | np.bool_
RealLike = int | float | np.integer | np.floating | np.ndarray | jax.Array


def is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_int(
    name: str,
    item: Any,
    minimum: int = 1,
    *,
    accepted: str | None = None,
    value: Any = None,
    also: int | None = None,
) -> int:
    """`item` as a plain int `>= minimum` (or equal to `also`), else a
    `TypeError`/`ValueError` saying `name` must be `accepted` (default: an int
    `>= minimum`) and showing what was received: the item and its type for a
    non-int, `value` (the whole argument `item` belongs to, default `item`) for
    an int out of range."""
    accepted = accepted or f"an int >= {minimum}"
    if not is_int(item):
        raise TypeError(
            f"{name} must be {accepted}; got {item!r} of type {type(item).__name__}."
        )
    number = operator.index(item)
    if number >= minimum or number == also:
        return number
    shown = item if value is None else value
    raise ValueError(f"{name} must be {accepted}; got {shown!r}.")


def normalize_ints(name: str, value: Any, *, minus_one: bool = False) -> IntOrTuple:
    """Validate an int-or-tuple-of-ints argument; return it with plain ints."""
    accepted = "an int >= 1" + (" or -1 (the whole dim)" if minus_one else "")
    accepted += ", or a tuple of those (one per dim)"
    also = -1 if minus_one else None

    def check(item: Any) -> int:
        return check_int(name, item, accepted=accepted, value=value, also=also)

    if isinstance(value, (tuple, list)):
        if len(value) == 0:
            raise ValueError(f"{name} must not be an empty tuple; got {value!r}.")
        return tuple(check(item) for item in value)
    return check(value)


def is_real(value: Any) -> bool:
    """A real number: a Python or NumPy int or float, or a concrete 0-d array
    of one (not a bool)."""
    if isinstance(value, (bool, np.bool_, Tracer)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    return (
        isinstance(value, (np.ndarray, jax.Array))
        and np.ndim(value) == 0
        and np.asarray(value).dtype.kind in "iuf"
    )


def check_bool(name: str, value: Any) -> bool:
    """A flag: a bool (or NumPy bool), never a truthy value of another type."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{name} must be a bool (True or False); got {value!r} of type "
            f"{type(value).__name__}."
        )
    return bool(value)


def normalize_cval(cval: Any) -> Cval:
    """`cval` as a Python number: a number, NumPy scalar or concrete 0-d array."""
    if type(cval) in (bool, int, float, complex):  # not NumPy's subclasses
        return cval
    accepted = (
        "cval must be a number (the fill value of boundary='constant'): a Python or "
        "NumPy scalar or a 0-d array"
    )
    if isinstance(cval, Tracer):
        raise TypeError(
            f"{accepted}, known when the stencil is built (it is a static field); "
            f"got a traced value {cval!r}."
        )
    if isinstance(cval, (np.generic, np.ndarray, jax.Array)):
        array = np.asarray(cval)
        if array.shape == () and array.dtype.kind in "biufc":
            return array.item()
    raise TypeError(f"{accepted}; got {cval!r} of type {type(cval).__name__}.")


def _padding_dim(value: Any, whole: Any) -> PaddingDim:
    if isinstance(value, str):
        lowered = value.lower()
        if lowered not in ("same", "valid"):
            raise ValueError(
                f"padding string must be 'same' or 'valid' (any case); got {value!r} "
                f"in padding={whole!r}."
            )
        return lowered
    if is_int(value):
        return operator.index(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(is_int(v) for v in value)
    ):
        return (operator.index(value[0]), operator.index(value[1]))
    raise TypeError(
        "padding must be an int, 'same'/'valid', or a tuple with one entry per dim, "
        f"each an int, a (lo, hi) pair of ints or a string; got {whole!r}."
    )


def normalize_padding(padding: Any) -> Padding:
    """Validate `padding` and return it in a hashable canonical form."""
    if isinstance(padding, (tuple, list)):
        if len(padding) == 0:
            raise ValueError("padding must not be an empty tuple.")
        return tuple(_padding_dim(item, padding) for item in padding)
    return _padding_dim(padding, padding)


def normalize_offset(offset: Any) -> Offset:
    """Validate smap's `offset` (int, or per dim an int or a (lo, hi) pair)."""

    accepted = "an int >= 0, or per dim an int >= 0 or a (lo, hi) pair of those"

    def check(value: Any) -> int:
        if not is_int(value):
            raise TypeError(
                f"offset must be {accepted}; got {offset!r} ({value!r} is of type "
                f"{type(value).__name__})."
            )
        if operator.index(value) < 0:
            raise ValueError(f"offset must be {accepted}; got {offset!r}.")
        return operator.index(value)

    if isinstance(offset, (tuple, list)):
        return tuple(
            (check(item[0]), check(item[1]))
            if isinstance(item, (tuple, list)) and len(item) == 2
            else (check(item), check(item))
            for item in offset
        )
    return check(offset)


def normalize_boundary(boundary: Any) -> str:
    if not isinstance(boundary, str):
        raise TypeError(
            f"boundary must be one of {BOUNDARY_MODES}; got {boundary!r} of type "
            f"{type(boundary).__name__}."
        )
    if boundary.lower() not in BOUNDARY_MODES:
        raise ValueError(f"boundary must be one of {BOUNDARY_MODES}; got {boundary!r}.")
    return boundary.lower()


def normalize_named_axis(
    named_axis: Any,
) -> tuple[tuple[int, str], ...] | None:
    """Validate `named_axis` ({dim: name}) and return sorted (dim, name) pairs."""
    if named_axis is None:
        return None
    if isinstance(named_axis, tuple):  # already normalised (dataclasses.replace)
        named_axis = dict(named_axis)
    if not isinstance(named_axis, dict):
        raise TypeError(
            "named_axis must be a dict mapping dims to names, e.g. {0: 'i', 1: 'j'}; "
            f"got {named_axis!r}."
        )
    pairs = []
    for dim, name in named_axis.items():
        if not is_int(dim) or not isinstance(name, str):
            raise TypeError(
                "named_axis must map non-negative ints (dims) to identifiers such "
                f"as 'i' or 'n'; got the entry {dim!r}: {name!r} in "
                f"named_axis={named_axis!r}."
            )
        if operator.index(dim) < 0:
            raise ValueError(
                f"named_axis keys must be non-negative ints (dims); got {dim!r} in "
                f"named_axis={named_axis!r}."
            )
        if not name.isidentifier():
            raise ValueError(
                "named_axis values must be identifiers such as 'i' or 'n'; got "
                f"{name!r} in named_axis={named_axis!r}."
            )
        pairs.append((operator.index(dim), name))
    names = [name for _, name in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"named_axis names must be distinct; got {named_axis!r}.")
    return tuple(sorted(pairs))


def _per_dim(name: str, value: Any, ndim: int, shape: tuple[int, ...]) -> tuple:
    if isinstance(value, tuple):
        if len(value) != ndim:
            raise ValueError(
                f"{name}={value!r} has {len(value)} entries but the array has rank "
                f"{ndim} (shape {shape}); give one entry per dim or a single value."
            )
        return value
    return (value,) * ndim


def anchor_tap(kernel: int) -> int:
    """Tap index of the relative origin `x[0]` of a window of `kernel` taps."""
    return (kernel - 1) // 2


@dataclasses.dataclass(frozen=True)
class DimLayout:
    """The geometry of one dim, resolved against an input length.

    Output position `o` reads padded coordinates `o*stride + t*dilation` for
    taps `t` in `range(kernel)`; padded coordinate `p` is input index `p - lo`.
    """

    size: int
    kernel: int
    stride: int
    dilation: int
    lo: int
    hi: int

    @property
    def span(self) -> int:
        """Padded extent of one (dilated) window."""
        return self.dilation * (self.kernel - 1) + 1

    @property
    def padded_size(self) -> int:
        """Length of the padded input."""
        return self.size + self.lo + self.hi

    @property
    def out(self) -> int:
        """Output length: 0 for an empty input whose padding holds no window."""
        return max(0, (self.padded_size - self.span) // self.stride + 1)

    @property
    def anchor(self) -> int:
        """Tap index of the relative origin `x[0]`."""
        return anchor_tap(self.kernel)

    @property
    def anchor_offset(self) -> int:
        """Offset of the anchor tap from its window's first tap (padded
        coordinates): where output 0's anchor sits in the padded input."""
        return self.anchor * self.dilation

    def anchor_input(self, position: Any) -> Any:
        """Input coordinate of the anchor of output `position` (an int or an
        integer array)."""
        return position * self.stride + self.anchor_offset - self.lo

    def source(self, start: int, stop: int) -> tuple[int, int]:
        """Padded coordinates `[first, last)` read by the outputs `[start, stop)`."""
        return start * self.stride, (stop - 1) * self.stride + self.span

    @property
    def interior(self) -> tuple[int, int]:
        """Outputs `[a, b)` whose whole window lies inside the unpadded input."""
        a = min(max(0, -(-self.lo // self.stride)), self.out)
        last = self.size - 1 + self.lo - (self.kernel - 1) * self.dilation
        b = min(self.out, last // self.stride + 1) if last >= 0 else 0
        return a, max(a, b)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Normalised, hashable kernel geometry, not yet tied to an array rank."""

    kernel_size: IntOrTuple
    strides: IntOrTuple
    padding: Padding
    dilation: IntOrTuple

    def __post_init__(self) -> None:
        ranks = {
            name: len(value)
            for name, value in dataclasses.asdict(self).items()
            if isinstance(value, tuple)
        }
        if len(set(ranks.values())) > 1:
            raise ValueError(
                "kernel_size, strides, padding and dilation given as tuples must have "
                f"the same length (one entry per dim); got lengths {ranks}."
            )

    @property
    def rank(self) -> int | None:
        for value in dataclasses.astuple(self):
            if isinstance(value, tuple):
                return len(value)
        return None

    def layout(self, shape: Sequence[int]) -> tuple[DimLayout, ...]:
        return _layout(self, tuple(shape))


def _resolve_padding(value: PaddingDim, span: int) -> tuple[int, int]:
    if value == "same":
        return ((span - 1) // 2, span // 2)
    if value == "valid":
        return (0, 0)
    if isinstance(value, tuple):
        return value
    assert isinstance(value, int)
    return (value, value)


@ft.lru_cache(maxsize=512)
def _layout(geometry: Geometry, shape: tuple[int, ...]) -> tuple[DimLayout, ...]:
    ndim = len(shape)
    if ndim == 0:
        raise ValueError(
            "array must have at least one dim; got a scalar (shape ()). Reshape it, "
            "e.g. x.reshape(1)."
        )
    rank = geometry.rank
    if rank is not None and rank != ndim:
        raise ValueError(
            f"kernel rank {rank} (kernel_size={geometry.kernel_size!r}, "
            f"strides={geometry.strides!r}, padding={geometry.padding!r}, "
            f"dilation={geometry.dilation!r}) does not match the array rank {ndim} "
            f"(shape {shape}); give one entry per array dim."
        )
    kernels = _per_dim("kernel_size", geometry.kernel_size, ndim, shape)
    strides = _per_dim("strides", geometry.strides, ndim, shape)
    paddings = _per_dim("padding", geometry.padding, ndim, shape)
    dilations = _per_dim("dilation", geometry.dilation, ndim, shape)
    layouts = []
    for dim, (n, k, s, d, p) in enumerate(
        zip(shape, kernels, strides, dilations, paddings)
    ):
        k = n if k == -1 else k
        lo, hi = _resolve_padding(p, d * (k - 1) + 1)
        layout = DimLayout(size=n, kernel=k, stride=s, dilation=d, lo=lo, hi=hi)
        if n + lo + hi < layout.span and n > 0:
            raise ValueError(
                f"kernel larger than the padded input in dim {dim}: kernel_size {k} "
                f"with dilation {d} spans {layout.span}, but the input length {n} "
                f"padded by ({lo}, {hi}) is {n + lo + hi}. Use a smaller kernel or "
                "more padding."
            )
        layouts.append(layout)
    return tuple(layouts)


def out_shape(layouts: Sequence[DimLayout]) -> tuple[int, ...]:
    return tuple(layout.out for layout in layouts)
