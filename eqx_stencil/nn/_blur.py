"""`AverageBlur`: a depthwise box blur, as one stencil per spatial dim."""

import functools as ft
import math
from collections.abc import Sequence
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Real

from .._stencil import kmap
from ._parse import (
    PADDING_MODES,
    check_input,
    check_int,
    check_spatial_dims,
    ntuple,
    parse_padding_mode,
)


class AverageBlur(eqx.Module):
    """Depthwise box blur with `"same"` padding: every channel is replaced by
    the mean over a `kernel_size` window around each position.

    kernex's `AverageBlurLayer` as an Equinox layer (without its cast to
    `uint8`: the output is floating point). Padding is `((k-1)//2, k//2)` per
    dim, filled as `padding_mode` says (zeros by default, which count in the
    mean, as in kernex). The box is separable, so it runs as one 1-D stencil
    per spatial dim: `k_1 + .. + k_N` taps per position instead of
    `k_1 * .. * k_N`, which matters for the large kernels blurs use.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import eqx_stencil as es

    images = jnp.ones((8, 4, 64, 64), jnp.uint8)  # a batch of RGBA images
    blurred = jax.vmap(es.nn.AverageBlur(in_channels=4, kernel_size=(25, 25)))(images)
    blurred.shape, blurred[0, 0, 32, 32]  # (8, 4, 64, 64), 1.0
    ```
    """

    in_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    num_spatial_dims: int = eqx.field(static=True)
    padding_mode: str = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        kernel_size: int | Sequence[int],
        num_spatial_dims: int | None = None,
        padding_mode: str = "ZEROS",
    ):
        """**Arguments:**

        - `in_channels`: the number of channels (each blurred separately).
        - `kernel_size`: the window size: one int per spatial dim, or an int
          for every spatial dim.
        - `num_spatial_dims`: the number of spatial dims; by default the length
          of `kernel_size`, or 2 (images) when `kernel_size` is an int.
        - `padding_mode`: `'ZEROS'` (default), `'REFLECT'`, `'REPLICATE'` or
          `'CIRCULAR'`, as in [`eqx_stencil.nn.Conv`][].

        **Returns:**

        The layer. Call it on an array of shape `(in_channels, *spatial)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        blur = es.nn.AverageBlur(1, kernel_size=3, num_spatial_dims=1)
        blur(jnp.array([[3.0, 0.0, 0.0, 6.0]]))  # [[1, 1, 2, 2]]
        ```
        """
        self.in_channels = check_int("in_channels", in_channels)
        if num_spatial_dims is None:
            is_sequence = isinstance(kernel_size, Sequence)
            num_spatial_dims = len(kernel_size) if is_sequence else 2  # pyright: ignore[reportArgumentType]
        n = check_spatial_dims(num_spatial_dims)
        self.num_spatial_dims = n
        self.kernel_size = ntuple("kernel_size", kernel_size, n)
        self.padding_mode = parse_padding_mode(padding_mode)

    def __call__(
        self,
        x: Real[Array, " in_channels *spatial"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " in_channels *spatial"]:
        """**Arguments:**

        - `x`: the input, of shape `(in_channels, dim_1, .., dim_N)`; integer
          inputs (images) are promoted to floating point.
        - `key`: ignored; for compatibility with the Equinox API (keyword only).

        **Returns:**

        The blurred input, of the same shape.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        blur = es.nn.AverageBlur(3, kernel_size=(5, 5))
        blur(jnp.ones((3, 16, 16))).shape  # (3, 16, 16)
        ```
        """
        del key
        check_input(type(self).__name__, x, self.num_spatial_dims, self.in_channels)
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(jnp.result_type(float))
        return _box_blur(x, self.kernel_size, PADDING_MODES[self.padding_mode])


@ft.partial(jax.jit, static_argnums=(1, 2))
def _box_blur(x: Array, kernel_size: tuple[int, ...], boundary: str) -> Array:
    """Mean over `kernel_size` boxes ("same" padding), one spatial dim at a
    time; one compiled program, also when called eagerly."""
    rank = x.ndim
    for dim, k in enumerate(kernel_size, start=1):
        if k == 1:
            continue
        kernel = tuple(k if d == dim else 1 for d in range(rank))
        padding = tuple("same" if d == dim else 0 for d in range(rank))
        box = kmap(jnp.sum, kernel_size=kernel, padding=padding, boundary=boundary)
        x = cast(Array, box(x))
    return x / math.prod(kernel_size)
