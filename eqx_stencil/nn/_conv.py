"""`Conv`: N-d convolution as two stencils around one matrix product.

A convolution of `x` (`C` channels, spatial dims `n_1 .. n_N`) with a kernel
`k_1 x .. x k_N` is computed as:

1. **Taps of the last dim** (a stencil with kernel `(1, .., 1, k_N)`): the
   `k_N` shifted, strided, dilated and padded copies of `x` along its last dim.
2. **One matrix product** with the weight: for every input position, the
   contribution of that position to each of the `T = k_1 .. k_{N-1}` taps of
   the other dims, for every output channel (`(T * C_out) x (k_N * C_in)`
   times `(k_N * C_in) x positions`; per group with `groups > 1`).
3. **Shifted sum over the other dims** (a stencil with kernel
   `(T, k_1, .., k_{N-1})` reading only its `T` diagonal taps, with the other
   dims' stride, padding and dilation): output = sum over `t` of the
   contribution to tap `t`, shifted by that tap's offset.

Step 2 is a GEMM with `K = k_N * C_in / groups` (fast) and the stencils only
move data `k_N` (step 1) and `T` (step 3) times the input/output size, where
materialising all `prod(kernel)` taps (im2col) would move `prod(kernel)` times
the input: on XLA:CPU this runs within a few tens of percent of `lax.conv`
where full im2col is several times slower. Because the product is pointwise in
space, padding (with any boundary mode) commutes with it: the last dim is
padded in step 1 and the other dims in step 3.
"""

import functools as ft
import math
import operator
from collections.abc import Sequence
from typing import Any, cast

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jrandom
import numpy as np
from jaxtyping import Array, Inexact, PRNGKeyArray

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


def _last_dim_taps(
    x: Array, k: int, stride: int, pad: tuple[int, int], dilation: int, boundary: str
) -> tuple[Array, ...]:
    """Step 1: the `k` taps of `x` along its last dim, each of shape
    `x.shape[:-1] + (m,)`."""
    rank = x.ndim
    head = (0,) * (rank - 1)

    def taps(window: Any) -> tuple[Array, ...]:
        return tuple(window[head + (j,)] for j in range(k))

    ones = (1,) * (rank - 1)
    stencil = kmap(
        taps,
        kernel_size=(*ones, k),
        strides=(*ones, stride),
        padding=(*(((0, 0),) * (rank - 1)), pad),
        dilation=(*ones, dilation),
        boundary=boundary,
    )
    return cast(tuple[Array, ...], stencil(x))


def _shifted_sum(
    y: Array,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    pads: Pads,
    dilation: tuple[int, ...],
    boundary: str,
) -> Array:
    """Step 3: `y` of shape `(G, T, O_g, n_1, .., n_{N-1}, m_N)` holds, at
    every position, the contribution to each tap `t` of the other dims; sum
    them, each read at its tap's offset: shape `(G, 1, O_g, m_1, .., m_N)`."""
    offsets = list(np.ndindex(*kernel))

    def shifted_sum(window: Any) -> Array:
        planes = [window[(0, t, 0, *tap, 0)] for t, tap in enumerate(offsets)]
        return ft.reduce(operator.add, planes)

    stencil = kmap(
        shifted_sum,
        kernel_size=(1, len(offsets), 1, *kernel, 1),
        strides=(1, 1, 1, *stride, 1),
        padding=((0, 0), (0, 0), (0, 0), *pads, (0, 0)),
        dilation=(1, 1, 1, *dilation, 1),
        boundary=boundary,
    )
    return cast(Array, stencil(y))


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
    eager call does not dispatch the stencils' many slices one by one."""
    n = x.ndim - 1
    c_out, c_group = weight.shape[:2]
    kernel = weight.shape[2:]
    o_group = c_out // groups
    k_last = kernel[-1]
    other = kernel[:-1]
    t = math.prod(other)

    # 1. Taps of the last dim: (G, k_N, C_g, n_1, .., n_{N-1}, m_N).
    taps = _last_dim_taps(x, k_last, stride[-1], pads[-1], dilation[-1], boundary)
    rest = taps[0].shape[1:]
    patches = jnp.stack([tap.reshape(groups, c_group, *rest) for tap in taps], axis=1)

    # 2. Weight as (G, T * O_g, k_N, C_g): rows (tap of the other dims, output
    # channel), then (tap of the last dim, input channel), contracted with the
    # patches' (k_N, C_g) dims. The spatial dims stay separate dims (never
    # flattened), so a batch or spatial sharding passes through unchanged.
    w = weight.reshape(groups, o_group, c_group, t, k_last)
    w = jnp.transpose(w, (0, 3, 1, 4, 2)).reshape(groups, t * o_group, k_last, c_group)
    if groups == 1:
        y = lax.dot_general(w[0], patches[0], (((1, 2), (0, 1)), ((), ())))
    else:
        y = lax.dot_general(w, patches, (((2, 3), (1, 2)), ((0,), (0,))))
    y = y.reshape(groups, t, o_group, *rest)

    # 3. Shifted sum over the taps of the other dims.
    if n > 1:
        y = _shifted_sum(y, other, stride[:-1], pads[:-1], dilation[:-1], boundary)
    return y.reshape(c_out, *y.shape[3:])


class Conv(eqx.Module):
    """General N-dimensional convolution, computed with stencils.

    A drop-in replacement for `eqx.nn.Conv`: same constructor, same
    fields (`weight` of shape `(out_channels, in_channels // groups, *kernel_size)`,
    `bias` of shape `(out_channels, 1, .., 1)`, static geometry), same
    initialisation (the same `key` gives the same weights), same output. So
    `eqx.tree_at(lambda m: m.weight, conv, eqx_conv.weight)` moves weights
    between the two.

    The forward pass is two [`eqx_stencil.kmap`][] stencils around one matrix
    product: the taps along the last spatial dim, a GEMM with the weight, and a
    shifted sum over the taps of the other dims (see the module's notes).

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
