"""`Conv`: N-d convolution as one stencil whose function is linear.

Each group's output at a position is `tensordot(weight, window)` over a
window `(C_in / groups, *kernel)` that covers the group's channels whole. A
linear function of that many taps is lowered by the stencil to one
`lax.conv_general_dilated` (`eqx_stencil/_conv_lowering.py`: the window's
channel dim becomes input channels, the padding, with any boundary mode, is
folded in), never to kmap's contraction (`no_contraction`: its weight
gradient under a batch `vmap` is slower than the convolution's), and
`jax.vmap` over the groups makes it one grouped convolution.
Without groups the layer asks for the convolution however few its channels
(`_conv_lowering.always_conv`): below the threshold kmap's unrolled slices
win a forward pass, but their weight gradient compiles 50x slower than
`eqx.nn.Conv`'s (`es.nn.Conv2d(3, 4, 3)`: 26.7 s against 0.35 s).
"""

import contextlib
import functools as ft
import math
from collections.abc import Sequence
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jrandom
from jaxtyping import Array, Inexact, PRNGKeyArray

from .._conv_lowering import always_conv, no_contraction
from .._stencil import kmap
from ._parse import (
    PADDING_MODES,
    Pads,
    check_input,
    check_int,
    check_output_shape,
    check_spatial_dims,
    default_floating_dtype,
    ntuple,
    parse_padding,
    parse_padding_mode,
    resolve_pads,
)


PaddingArg = str | int | Sequence[int] | Sequence[tuple[int, int]]


def _correlate(window: Any, weight: Array) -> Array:
    """One position: every output channel's sum of weights times window."""
    return jnp.tensordot(weight, window, axes=weight.ndim - 1)


@ft.partial(
    jax.jit, static_argnames=("stride", "pads", "dilation", "groups", "boundary")
)
def convolve(
    x: Array,
    weight: Array,
    stride: tuple[int, ...],
    pads: Pads,
    dilation: tuple[int, ...],
    groups: int,
    boundary: str,
) -> Array:
    """Cross-correlation of `x` `(C_in, *spatial)` with `weight`
    `(C_out, C_in // groups, *kernel)`, as `lax.conv_general_dilated` with
    explicit `pads` filled by `boundary`. Returns `(C_out, *out_spatial)`.

    Compiled as one program (nested in the caller's `jit`, if any), so that an
    eager call runs as one computation."""
    c_out, c_group = weight.shape[:2]
    stencil = kmap(
        _correlate,
        kernel_size=(c_group, *weight.shape[2:]),
        strides=(1, *stride),
        padding=((0, 0), *pads),
        dilation=(1, *dilation),
        boundary=boundary,
    )
    xs = x.reshape(groups, c_group, *x.shape[1:])
    ws = weight.reshape(groups, c_out // groups, *weight.shape[1:])
    # Traced here (`convolve` is jitted). Grouped convolutions keep kmap's
    # rule: XLA's partitioner gathers a batch-sharded input of a convolution
    # with feature groups (jaxlib 0.10, `lax.conv` as well), the slices do not.
    lowering = always_conv() if groups == 1 else contextlib.nullcontext()
    with lowering, no_contraction():
        # (groups, 1, *out_spatial, C_out / groups)
        out = cast(Array, jax.vmap(stencil)(xs, ws))
    out = jnp.moveaxis(out[:, 0], -1, 1)
    return out.reshape(c_out, *out.shape[2:])


class Conv(eqx.Module):
    """General N-dimensional convolution, computed with stencils.

    A drop-in replacement for `eqx.nn.Conv`: same constructor, same
    fields (`weight` of shape `(out_channels, in_channels // groups, *kernel_size)`,
    `bias` of shape `(out_channels, 1, .., 1)`, static geometry), same
    initialisation (the same `key` gives the same weights), same output. So
    `eqx.tree_at(lambda m: m.weight, conv, eqx_conv.weight)` moves weights
    between the two.

    The forward pass is one [`eqx_stencil.kmap`][] stencil whose function
    is the weight's sum of products with a window `(in_channels // groups,
    *kernel_size)`; being linear, it is lowered to one convolution (see the
    module's notes).

    **Example:**

    ```python
    import equinox as eqx
    import jax
    import eqx_stencil as es

    key = jax.random.key(0)
    ours = es.nn.Conv(2, 3, 8, kernel_size=3, padding="same", key=key)
    theirs = eqx.nn.Conv(2, 3, 8, kernel_size=3, padding="same", key=key)
    ours = eqx.tree_at(lambda m: (m.weight, m.bias), ours, (theirs.weight, theirs.bias))
    x = jax.random.normal(key, (3, 16, 16))
    assert jax.numpy.allclose(ours(x), theirs(x), atol=1e-5)
    ```
    """

    num_spatial_dims: int = eqx.field(static=True)
    weight: Array
    bias: Array | None
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    stride: tuple[int, ...] = eqx.field(static=True)
    padding: str | tuple[tuple[int, int], ...] = eqx.field(static=True)
    dilation: tuple[int, ...] = eqx.field(static=True)
    groups: int = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    padding_mode: str = eqx.field(static=True)

    def __init__(
        self,
        num_spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype=None,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `num_spatial_dims`: the number of spatial dims (2 for images).
        - `in_channels`, `out_channels`: numbers of input and output channels.
        - `kernel_size`: int (every spatial dim) or one int per spatial dim.
        - `stride`: int or one per spatial dim.
        - `padding`: an int, one int per spatial dim, one `(lo, hi)` pair per
          spatial dim, or `'SAME'`/`'SAME_LOWER'`/`'VALID'` (any case), with
          `lax.conv_general_dilated`'s meaning (`'SAME'` puts the odd pad
          after, `'SAME_LOWER'` before; both depend on the stride).
        - `dilation`: distance between kernel taps, int or one per spatial dim.
        - `groups`: input channels are split into `groups` groups, each
          convolved with its own `out_channels // groups` filters. Both
          channel counts must be divisible by it.
        - `use_bias`: whether to add a bias after the convolution.
        - `padding_mode`: what padding is filled with: `'ZEROS'`, `'REFLECT'`
          (`1234 -> 32123432`), `'REPLICATE'` (`1234 -> 11123444`) or
          `'CIRCULAR'` (`1234 -> 34123412`).
        - `dtype`: dtype of the weight and bias; default float32 (float64 in
          64-bit mode).
        - `key`: a `jax.random.PRNGKey` for the initialisation (keyword only):
          uniform in `±1/sqrt(fan_in)`, as `eqx.nn.Conv`.

        **Returns:**

        The layer. Call it on an array of shape `(in_channels, *spatial)`.

        **Example:**

        ```python
        import jax
        import eqx_stencil as es

        conv = es.nn.Conv(2, 3, 8, kernel_size=3, padding="same", key=jax.random.key(0))
        conv(jax.numpy.ones((3, 32, 32))).shape  # (8, 32, 32)
        ```
        """
        n = check_spatial_dims(num_spatial_dims)
        in_channels = check_int("in_channels", in_channels)
        out_channels = check_int("out_channels", out_channels)
        groups = check_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels={in_channels} and out_channels={out_channels} must both "
                f"be divisible by groups={groups}."
            )
        kernel_size = ntuple("kernel_size", kernel_size, n)
        stride = ntuple("stride", stride, n)
        dilation = ntuple("dilation", dilation, n)
        if not isinstance(use_bias, bool):
            raise TypeError(f"use_bias must be a bool; got {use_bias!r}.")
        dtype = default_floating_dtype() if dtype is None else dtype

        wkey, bkey = jrandom.split(key, 2)
        fan_in = (in_channels // groups) * math.prod(kernel_size)
        lim = 1 / math.sqrt(fan_in)
        wshape = (out_channels, in_channels // groups) + kernel_size
        self.weight = _uniform(wkey, wshape, dtype, lim)
        bshape = (out_channels,) + (1,) * n
        self.bias = _uniform(bkey, bshape, dtype, lim) if use_bias else None

        self.num_spatial_dims = n
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = parse_padding(padding, n)
        self.dilation = dilation
        self.groups = groups
        self.use_bias = use_bias
        self.padding_mode = parse_padding_mode(padding_mode)

    def __call__(
        self,
        x: Inexact[Array, " in_channels *spatial"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Inexact[Array, " out_channels *out_spatial"]:
        """**Arguments:**

        - `x`: the input, of shape `(in_channels, dim_1, .., dim_N)`. Use
          `jax.vmap` for a batch.
        - `key`: ignored; for compatibility with the Equinox API (keyword only).

        **Returns:**

        An array of shape `(out_channels, new_dim_1, .., new_dim_N)`.

        **Example:**

        ```python
        import equinox as eqx
        import jax
        import eqx_stencil as es

        conv = es.nn.Conv1d(1, 1, kernel_size=2, use_bias=False, key=jax.random.key(0))
        conv = eqx.tree_at(lambda c: c.weight, conv, jax.numpy.ones((1, 1, 2)))
        conv(jax.numpy.array([[1.0, 2.0, 4.0]]))  # [[3.0, 6.0]]
        ```
        """
        del key
        name = type(self).__name__
        check_input(name, x, self.num_spatial_dims, self.in_channels)
        spatial = tuple(x.shape[1:])
        pads = resolve_pads(
            self.padding, spatial, self.kernel_size, self.stride, self.dilation
        )
        check_output_shape(
            name, spatial, self.kernel_size, self.stride, pads, self.dilation
        )
        boundary = PADDING_MODES[self.padding_mode]
        out = convolve(
            x, self.weight, self.stride, pads, self.dilation, self.groups, boundary
        )
        if self.use_bias:
            out = out + cast(Array, self.bias)
        return out


def _uniform(key: PRNGKeyArray, shape: tuple[int, ...], dtype, lim: float) -> Array:
    """`eqx.nn`'s default initialisation: uniform in `[-lim, lim)` (real and
    imaginary parts separately for complex dtypes)."""
    if jnp.issubdtype(dtype, jnp.complexfloating):
        real_dtype = jnp.finfo(dtype).dtype
        rkey, ikey = jrandom.split(key, 2)
        real = jrandom.uniform(rkey, shape, real_dtype, minval=-lim, maxval=lim)
        imag = jrandom.uniform(ikey, shape, real_dtype, minval=-lim, maxval=lim)
        return real.astype(dtype) + 1j * imag.astype(dtype)
    return jrandom.uniform(key, shape, dtype, minval=-lim, maxval=lim)


class Conv1d(Conv):
    """As [`eqx_stencil.nn.Conv`][] with `num_spatial_dims=1`: a drop-in
    replacement for `eqx.nn.Conv1d`.

    **Example:**

    ```python
    import jax
    import eqx_stencil as es

    key = jax.random.key(0)
    layer = es.nn.Conv1d(2, 4, kernel_size=3, stride=2, padding=1, key=key)
    layer(jax.numpy.ones((2, 8))).shape  # (4, 4)
    ```
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype=None,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        As [`eqx_stencil.nn.Conv`][], without `num_spatial_dims`.

        **Returns:**

        The layer. Call it on an array of shape `(in_channels, dim)`.

        **Example:**

        ```python
        import jax
        import eqx_stencil as es

        conv = es.nn.Conv1d(2, 4, kernel_size=3, padding="same", key=jax.random.key(0))
        conv(jax.numpy.ones((2, 8))).shape  # (4, 8)
        ```
        """
        super().__init__(
            1,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            dtype,
            key=key,
        )


class Conv2d(Conv):
    """As [`eqx_stencil.nn.Conv`][] with `num_spatial_dims=2`: a drop-in
    replacement for `eqx.nn.Conv2d`.

    **Example:**

    ```python
    import jax
    import eqx_stencil as es

    key = jax.random.key(0)
    layer = es.nn.Conv2d(2, 4, kernel_size=3, stride=2, padding=1, key=key)
    layer(jax.numpy.ones((2, 8, 8))).shape  # (4, 4, 4)
    ```
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype=None,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        As [`eqx_stencil.nn.Conv`][], without `num_spatial_dims`.

        **Returns:**

        The layer. Call it on an array of shape `(in_channels, dim_1, dim_2)`.

        **Example:**

        ```python
        import jax
        import eqx_stencil as es

        conv = es.nn.Conv2d(2, 4, kernel_size=3, padding="same", key=jax.random.key(0))
        conv(jax.numpy.ones((2, 8, 8))).shape  # (4, 8, 8)
        ```
        """
        super().__init__(
            2,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            dtype,
            key=key,
        )


class Conv3d(Conv):
    """As [`eqx_stencil.nn.Conv`][] with `num_spatial_dims=3`: a drop-in
    replacement for `eqx.nn.Conv3d`.

    **Example:**

    ```python
    import jax
    import eqx_stencil as es

    key = jax.random.key(0)
    layer = es.nn.Conv3d(2, 4, kernel_size=3, stride=2, padding=1, key=key)
    layer(jax.numpy.ones((2, 8, 8, 8))).shape  # (4, 4, 4, 4)
    ```
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype=None,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        As [`eqx_stencil.nn.Conv`][], without `num_spatial_dims`.

        **Returns:**

        The layer. Call it on an array of shape `(in_channels, dim_1, dim_2, dim_3)`.

        **Example:**

        ```python
        import jax
        import eqx_stencil as es

        conv = es.nn.Conv3d(2, 4, kernel_size=3, padding="same", key=jax.random.key(0))
        conv(jax.numpy.ones((2, 8, 8, 8))).shape  # (4, 8, 8, 8)
        ```
        """
        super().__init__(
            3,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            dtype,
            key=key,
        )
