"""Argument parsing shared by the layers, with the package's error messages.

Everything here is static Python run at construction or trace time. The
accepted forms are those of `eqx.nn` (so that a layer can be swapped for its
`eqx.nn` counterpart); a bad value raises a `ValueError`/`TypeError` naming
the argument, the value received and what is accepted.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._geometry import DimLayout, check_int, is_int, out_shape


PADDING_MODES = {
    "ZEROS": "constant",
    "REFLECT": "reflect",
    "REPLICATE": "edge",
    "CIRCULAR": "wrap",
}
PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID")

Pads = tuple[tuple[int, int], ...]


def check_spatial_dims(num_spatial_dims: Any) -> int:
    return check_int("num_spatial_dims", num_spatial_dims)


def ntuple(name: str, value: Any, n: int, *, minimum: int = 1) -> tuple[int, ...]:
    """An int (every spatial dim) or a sequence of `n` ints, as a tuple."""
    accepted = f"an int >= {minimum} or a sequence of {n} such ints (one per dim)"
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(
                f"{name} must be {accepted}; got {value!r} with {len(value)} "
                f"entries for {n} spatial dims."
            )
        items = tuple(value)
    else:
        items = (value,) * n
    return tuple(
        check_int(name, item, minimum, accepted=accepted, value=value) for item in items
    )


def _pair(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(is_int(v) for v in value)
    )


def parse_pads(name: str, padding: Any, n: int) -> Pads:
    """Integer padding: an int, `n` ints, or `n` `(lo, hi)` pairs."""
    accepted = (
        f"an int, a sequence of {n} ints, or a sequence of {n} (lo, hi) pairs of ints"
    )
    if is_int(padding):
        p = operator.index(padding)
        return ((p, p),) * n
    if isinstance(padding, Sequence) and not isinstance(padding, str):
        if len(padding) == n:
            if all(is_int(p) for p in padding):
                return tuple((operator.index(p), operator.index(p)) for p in padding)
            if all(_pair(p) for p in padding):
                return tuple(
                    (operator.index(p[0]), operator.index(p[1])) for p in padding
                )
    raise ValueError(f"{name} must be {accepted}; got {padding!r}.")


def parse_padding(padding: Any, n: int) -> str | Pads:
    """`eqx.nn.Conv`'s padding: a string (`'SAME'`, `'SAME_LOWER'`, `'VALID'`,
    any case, stored upper case) or integer padding."""
    if isinstance(padding, str):
        upper = padding.upper()
        if upper not in PADDING_STRINGS:
            raise ValueError(
                f"padding must be one of {PADDING_STRINGS} (any case), an int, a "
                f"sequence of {n} ints or of {n} (lo, hi) pairs; got {padding!r}."
            )
        return upper
    return parse_pads("padding", padding, n)


def parse_padding_mode(padding_mode: Any) -> str:
    """`eqx.nn.Conv`'s padding_mode, stored upper case."""
    if not isinstance(padding_mode, str) or padding_mode.upper() not in PADDING_MODES:
        raise ValueError(
            f"padding_mode must be one of {tuple(PADDING_MODES)} (any case); got "
            f"{padding_mode!r}."
        )
    return padding_mode.upper()


def resolve_pads(
    padding: str | Pads,
    spatial: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Pads:
    """Explicit `(lo, hi)` pads for an input of spatial shape `spatial`, as
    `lax.conv_general_dilated` resolves a padding string."""
    if not isinstance(padding, str):
        return padding
    unpadded = ((0, 0),) * len(spatial)
    layouts = dim_layouts(spatial, kernel_size, stride, unpadded, dilation)
    spans = [layout.span for layout in layouts]
    pads = lax.padtype_to_pads(spatial, spans, stride, padding)
    return tuple((int(lo), int(hi)) for lo, hi in pads)


def dim_layouts(
    spatial: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    pads: Pads,
    dilation: tuple[int, ...],
) -> tuple[DimLayout, ...]:
    """One `DimLayout` per spatial dim (the stencil's geometry of a layer)."""
    return tuple(
        DimLayout(n, k, s, d, lo, hi)
        for n, k, s, (lo, hi), d in zip(spatial, kernel_size, stride, pads, dilation)
    )


def check_input(
    layer: str, x: Any, num_spatial_dims: int, channels: int | None = None
) -> None:
    """`x` must be `(channels, *spatial)` with `num_spatial_dims` spatial dims."""
    shape = jnp.shape(x)
    if len(shape) != num_spatial_dims + 1:
        raise ValueError(
            f"{layer} takes x of shape (channels, *spatial) with {num_spatial_dims} "
            f"spatial dims (rank {num_spatial_dims + 1}); got x of shape {shape}. "
            "Use jax.vmap for a batch."
        )
    if channels is not None and shape[0] != channels:
        raise ValueError(
            f"{layer} has in_channels={channels} but x has {shape[0]} channels "
            f"(x.shape={shape}, channels first)."
        )


def check_output_shape(
    layer: str,
    spatial: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    pads: Pads,
    dilation: tuple[int, ...],
) -> tuple[int, ...]:
    """The output's spatial shape; an error if a dim would be empty."""
    out = out_shape(dim_layouts(spatial, kernel_size, stride, pads, dilation))
    if min(out) < 1:
        raise ValueError(
            f"{layer}: an input of spatial shape {spatial} is too small for "
            f"kernel_size={kernel_size} with dilation={dilation} and padding "
            f"{pads}: the output would have spatial shape {out}."
        )
    return out


def default_floating_dtype() -> Any:
    """float64 when JAX runs in 64-bit mode, else float32 (as `eqx.nn`)."""
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
