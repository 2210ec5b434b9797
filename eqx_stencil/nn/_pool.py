"""`MaxPool` / `AvgPool`: pooling over sliding windows, as stencils.

Each is one [`eqx_stencil.kmap`][] stencil with a kernel of 1 on the channel
dim: `jnp.max` (padding filled with `-inf`) or `jnp.sum` (padding filled with
zeros, divided by the window size, padding included as in `eqx.nn.AvgPool`).
Geometry and `use_ceil` follow `eqx.nn.Pool` exactly.
"""

import functools as ft
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, Shaped

from .._stencil import kmap
from ._parse import (
    Pads,
    check_input,
    check_output_shape,
    check_spatial_dims,
    dim_layouts,
    ntuple,
    parse_pads,
)


PaddingArg = int | Sequence[int] | Sequence[tuple[int, int]]


class _Pool(eqx.Module):
    """Shared geometry and stencil of `MaxPool` and `AvgPool`."""

    num_spatial_dims: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    stride: tuple[int, ...] = eqx.field(static=True)
    padding: tuple[tuple[int, int], ...] = eqx.field(static=True)
    use_ceil: bool = eqx.field(static=True)

    def __init__(
        self,
        num_spatial_dims: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        use_ceil: bool = False,
    ):
        n = check_spatial_dims(num_spatial_dims)
        self.num_spatial_dims = n
        self.kernel_size = ntuple("kernel_size", kernel_size, n)
        self.stride = ntuple("stride", stride, n)
        pads = parse_pads("padding", padding, n)
        for (lo, hi), k in zip(pads, self.kernel_size):
            if min(lo, hi) < 0 or max(lo, hi) > k:
                raise ValueError(
                    f"padding must be between 0 and the kernel size in every dim; got "
                    f"padding={padding!r} for kernel_size={self.kernel_size}."
                )
        self.padding = pads
        if not isinstance(use_ceil, bool):
            raise TypeError(f"use_ceil must be a bool; got {use_ceil!r}.")
        self.use_ceil = use_ceil

    def _pads(self, spatial: tuple[int, ...]) -> Pads:
        """The padding, with `stride` more at the end of every dim whose last
        window would otherwise be dropped when `use_ceil` (as `eqx.nn.Pool`)."""
        if not self.use_ceil:
            return self.padding
        ones = (1,) * self.num_spatial_dims
        layouts = dim_layouts(
            spatial, self.kernel_size, self.stride, self.padding, ones
        )
        pads = []
        for lay in layouts:
            dropped = (lay.padded_size - lay.span) % lay.stride  # a partial window
            pads.append((lay.lo, lay.hi + lay.stride if dropped else lay.hi))
        for (lo, hi), k in zip(pads, self.kernel_size):
            if max(lo, hi) > k:
                raise ValueError(
                    f"{type(self).__name__}: with use_ceil=True the padding becomes "
                    f"{tuple(pads)} for an input of spatial shape {spatial}, larger "
                    f"than kernel_size={self.kernel_size}; use a smaller stride or "
                    "use_ceil=False."
                )
        return tuple(pads)

    def _pool(self, x: Array, reduce: Callable[[Array], Array], cval: Any) -> Array:
        name = type(self).__name__
        check_input(name, x, self.num_spatial_dims)
        spatial = tuple(x.shape[1:])
        pads = self._pads(spatial)
        ones = (1,) * self.num_spatial_dims
        check_output_shape(name, spatial, self.kernel_size, self.stride, pads, ones)
        return _pool(x, reduce, self.kernel_size, self.stride, pads, cval)


@ft.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _pool(
    x: Array,
    reduce: Callable[[Array], Array],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    pads: Pads,
    cval: Any,
) -> Array:
    """`reduce` over every window (kernel 1 on the channel dim), padding filled
    with `cval`; one compiled program, also when called eagerly."""
    stencil = kmap(
        reduce,
        kernel_size=(1, *kernel_size),
        strides=(1, *stride),
        padding=((0, 0), *pads),
        cval=cval,
    )
    return cast(Array, stencil(x))


def _lowest(dtype: Any) -> float | int | bool:
    """The identity of `max` for `dtype`: `-inf`, or the smallest integer."""
    if jnp.issubdtype(dtype, jnp.floating):
        return -math.inf
    if jnp.issubdtype(dtype, jnp.integer):
        return int(jnp.iinfo(dtype).min)
    if jnp.issubdtype(dtype, jnp.bool_):
        return False
    raise TypeError(f"MaxPool needs a real input; got an input of dtype {dtype}.")


@ft.cache
def first_max(kernel_size: tuple[int, ...]) -> Callable[[Array], Array]:
    """The window function of `MaxPool`: the maximum, taken tap by tap in
    row-major order keeping the earlier tap at ties (and propagating NaN).

    Its value is `jnp.max`'s; its gradient goes to the first maximal tap, as
    `lax.reduce_window`'s does, where `jnp.max` would share it among ties. It
    indexes single taps, so the stencil runs it by the shift lowering."""
    taps = [(0, *tap) for tap in np.ndindex(*kernel_size)]

    def window_max(window: Any) -> Array:
        best = window[taps[0]]
        for tap in taps[1:]:
            value = window[tap]
            best = jnp.where((value > best) | jnp.isnan(value), value, best)
        return best

    return window_max


class MaxPool(_Pool):
    """N-dimensional max pooling over sliding windows, computed with a stencil.

    A drop-in replacement for `eqx.nn.MaxPool1d/2d/3d` (same arguments,
    fields and output; padding is filled with `-inf`). Gradients also match:
    at ties within a window the gradient goes to the first maximal tap
    (row-major order), as with `lax.reduce_window`.

    **Example:**

    ```python
    import equinox as eqx
    import jax
    import eqx_stencil as es

    x = jax.random.normal(jax.random.key(0), (3, 9, 9))
    ours = es.nn.MaxPool(2, kernel_size=3, stride=2, padding=1)
    theirs = eqx.nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    assert (ours(x) == theirs(x)).all()
    ```
    """

    def __init__(
        self,
        num_spatial_dims: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        use_ceil: bool = False,
    ):
        """**Arguments:**

        - `num_spatial_dims`: the number of spatial dims.
        - `kernel_size`: window size, int or one per spatial dim.
        - `stride`: step between windows, int or one per spatial dim (default 1,
          as `eqx.nn`).
        - `padding`: an int, one per spatial dim, or one `(lo, hi)` pair per
          spatial dim, each between 0 and the kernel size.
        - `use_ceil`: if `True`, the output length is rounded up instead of
          down, padding the end by `stride` where needed (as `eqx.nn.Pool`).

        **Returns:**

        The layer. Call it on an array of shape `(channels, *spatial)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        pool = es.nn.MaxPool(2, kernel_size=2, stride=2)
        pool(jnp.arange(16.0).reshape(1, 4, 4))  # [[[5, 7], [13, 15]]]
        ```
        """
        super().__init__(num_spatial_dims, kernel_size, stride, padding, use_ceil)

    def __call__(
        self, x: Shaped[Array, " channels *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Shaped[Array, " channels *out_spatial"]:
        """**Arguments:**

        - `x`: the input, of shape `(channels, dim_1, .., dim_N)`.
        - `key`: ignored; for compatibility with the Equinox API (keyword only).

        **Returns:**

        The maximum over each window: shape `(channels, new_dim_1, .., new_dim_N)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        es.nn.MaxPool1d(3, padding=1)(jnp.array([[1.0, 5.0, 2.0]]))  # [[5, 5, 5]]
        ```
        """
        del key
        reduce = first_max(self.kernel_size)
        return self._pool(x, reduce, _lowest(jnp.result_type(x)))


class AvgPool(_Pool):
    """N-dimensional average pooling over sliding windows, computed with a stencil.

    A drop-in replacement for `eqx.nn.AvgPool1d/2d/3d` (same arguments,
    fields and output: padding counts as zeros and the sum is divided by the
    full window size).

    **Example:**

    ```python
    import equinox as eqx
    import jax
    import eqx_stencil as es

    x = jax.random.normal(jax.random.key(0), (3, 9))
    ours = es.nn.AvgPool(1, kernel_size=2, stride=2, use_ceil=True)
    theirs = eqx.nn.AvgPool1d(kernel_size=2, stride=2, use_ceil=True)
    assert jax.numpy.allclose(ours(x), theirs(x))  # both of shape (3, 5)
    ```
    """

    def __init__(
        self,
        num_spatial_dims: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        use_ceil: bool = False,
    ):
        """**Arguments:**

        As [`eqx_stencil.nn.MaxPool`][].

        **Returns:**

        The layer. Call it on an array of shape `(channels, *spatial)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        pool = es.nn.AvgPool(2, kernel_size=2, stride=2)
        pool(jnp.arange(16.0).reshape(1, 4, 4))  # [[[2.5, 4.5], [10.5, 12.5]]]
        ```
        """
        super().__init__(num_spatial_dims, kernel_size, stride, padding, use_ceil)

    def __call__(
        self, x: Shaped[Array, " channels *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Shaped[Array, " channels *out_spatial"]:
        """**Arguments:**

        - `x`: the input, of shape `(channels, dim_1, .., dim_N)`.
        - `key`: ignored; for compatibility with the Equinox API (keyword only).

        **Returns:**

        The mean over each window (padding counted as zeros): shape
        `(channels, new_dim_1, .., new_dim_N)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        es.nn.AvgPool1d(2, stride=2)(jnp.array([[1.0, 3.0, 2.0, 6.0]]))  # [[2, 4]]
        ```
        """
        del key
        return self._pool(x, jnp.sum, 0) / math.prod(self.kernel_size)


class MaxPool1d(MaxPool):
    """As [`eqx_stencil.nn.MaxPool`][] with `num_spatial_dims=1`: a drop-in
    replacement for `eqx.nn.MaxPool1d`.

    **Example:**

    ```python
    import jax
    import eqx_stencil as es

    layer = es.nn.MaxPool1d(kernel_size=2, stride=2)
    layer(jax.numpy.ones((2, 8))).shape  # (2, 4)
    ```
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        use_ceil: bool = False,
    ):
        """**Arguments:**

        As [`eqx_stencil.nn.MaxPool`][], without `num_spatial_dims`.

        **Returns:**

        The layer. Call it on an array of shape `(channels, dim)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        es.nn.MaxPool1d(2, stride=2)(jnp.ones((3, 8))).shape  # (3, 4)
        ```
        """
        super().__init__(1, kernel_size, stride, padding, use_ceil)


class MaxPool2d(MaxPool):
    """As [`eqx_stencil.nn.MaxPool`][] with `num_spatial_dims=2`: a drop-in
    replacement for `eqx.nn.MaxPool2d`.

    **Example:**

    ```python
    import jax
    import eqx_stencil as es

    layer = es.nn.MaxPool2d(kernel_size=2, stride=2)
    layer(jax.numpy.ones((2, 8, 8))).shape  # (2, 4, 4)
    ```
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        use_ceil: bool = False,
    ):
        """**Arguments:**

        As [`eqx_stencil.nn.MaxPool`][], without `num_spatial_dims`.

        **Returns:**

        The layer. Call it on an array of shape `(channels, dim_1, dim_2)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        es.nn.MaxPool2d(2, stride=2)(jnp.ones((3, 8, 8))).shape  # (3, 4, 4)
        ```
        """
        super().__init__(2, kernel_size, stride, padding, use_ceil)


class MaxPool3d(MaxPool):
    """As [`eqx_stencil.nn.MaxPool`][] with `num_spatial_dims=3`: a drop-in
    replacement for `eqx.nn.MaxPool3d`.

    **Example:**

    ```python
    import jax
    import eqx_stencil as es

    layer = es.nn.MaxPool3d(kernel_size=2, stride=2)
    layer(jax.numpy.ones((2, 8, 8, 8))).shape  # (2, 4, 4, 4)
    ```
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        use_ceil: bool = False,
    ):
        """**Arguments:**

        As [`eqx_stencil.nn.MaxPool`][], without `num_spatial_dims`.

        **Returns:**

        The layer. Call it on an array of shape `(channels, dim_1, dim_2, dim_3)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        es.nn.MaxPool3d(2, stride=2)(jnp.ones((3, 8, 8, 8))).shape  # (3, 4, 4, 4)
        ```
        """
        super().__init__(3, kernel_size, stride, padding, use_ceil)


class AvgPool1d(AvgPool):
    """As [`eqx_stencil.nn.AvgPool`][] with `num_spatial_dims=1`: a drop-in
    replacement for `eqx.nn.AvgPool1d`.

    **Example:**

    ```python
    import jax
    import eqx_stencil as es

    layer = es.nn.AvgPool1d(kernel_size=2, stride=2)
    layer(jax.numpy.ones((2, 8))).shape  # (2, 4)
    ```
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        use_ceil: bool = False,
    ):
        """**Arguments:**

        As [`eqx_stencil.nn.AvgPool`][], without `num_spatial_dims`.

        **Returns:**

        The layer. Call it on an array of shape `(channels, dim)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        es.nn.AvgPool1d(2, stride=2)(jnp.ones((3, 8))).shape  # (3, 4)
        ```
        """
        super().__init__(1, kernel_size, stride, padding, use_ceil)


class AvgPool2d(AvgPool):
    """As [`eqx_stencil.nn.AvgPool`][] with `num_spatial_dims=2`: a drop-in
    replacement for `eqx.nn.AvgPool2d`.

    **Example:**

    ```python
    import jax
    import eqx_stencil as es

    layer = es.nn.AvgPool2d(kernel_size=2, stride=2)
    layer(jax.numpy.ones((2, 8, 8))).shape  # (2, 4, 4)
    ```
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        use_ceil: bool = False,
    ):
        """**Arguments:**

        As [`eqx_stencil.nn.AvgPool`][], without `num_spatial_dims`.

        **Returns:**

        The layer. Call it on an array of shape `(channels, dim_1, dim_2)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        es.nn.AvgPool2d(2, stride=2)(jnp.ones((3, 8, 8))).shape  # (3, 4, 4)
        ```
        """
        super().__init__(2, kernel_size, stride, padding, use_ceil)


class AvgPool3d(AvgPool):
    """As [`eqx_stencil.nn.AvgPool`][] with `num_spatial_dims=3`: a drop-in
    replacement for `eqx.nn.AvgPool3d`.

    **Example:**

    ```python
    import jax
    import eqx_stencil as es

    layer = es.nn.AvgPool3d(kernel_size=2, stride=2)
    layer(jax.numpy.ones((2, 8, 8, 8))).shape  # (2, 4, 4, 4)
    ```
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        use_ceil: bool = False,
    ):
        """**Arguments:**

        As [`eqx_stencil.nn.AvgPool`][], without `num_spatial_dims`.

        **Returns:**

        The layer. Call it on an array of shape `(channels, dim_1, dim_2, dim_3)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        es.nn.AvgPool3d(2, stride=2)(jnp.ones((3, 8, 8, 8))).shape  # (3, 4, 4, 4)
        ```
        """
        super().__init__(3, kernel_size, stride, padding, use_ceil)
