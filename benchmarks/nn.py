"""`eqx_stencil.nn` layers against their `eqx.nn` counterparts, batched with
`jax.vmap`.

The `eqx.nn` layer is the reference (shown as the `lax` variant: it is
`lax.conv_general_dilated` / `lax.reduce_window`); both layers hold the same
weights (copied with `eqx.tree_at`). The bars: within 1.5× of `eqx.nn`; the
convolution, being one convolution like `eqx.nn`'s, at most 1.0× its forward
pass and 1.1× a training step's gradient (w.r.t. weight and bias; issue 13).
Those layers compile to `eqx.nn`'s program, so beside them `eqx.nn`'s is
jitted a second time and timed too (`lax, jitted again`): its ratio to the
first is the noise of a ratio between identical programs in that run.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

import eqx_stencil.nn as enn

from ._report import Bar
from ._runtime import ES, LAX, RuntimeCase, Variant


BATCH = 8
TOLERANCE = 1e-4
SPEED_BAR = Bar(ES, LAX, limit=1.5)
CONV_BAR = Bar(ES, LAX, limit=1.0, same_program=True)
CONV_GRAD_BAR = Bar(ES, LAX, limit=1.1, same_program=True)
# `eqx.nn`'s program jitted a second time and timed beside the first: the
# ratio of two identical programs, the noise floor of the bars above.
LAX_AGAIN = "lax, jitted again"
NOISE = Bar(LAX_AGAIN, LAX, limit=None, same_program=True)


def _images(channels: int, n: int) -> Array:
    rng = np.random.default_rng(0)
    return jax.device_put(rng.standard_normal((BATCH, channels, n, n), np.float32))


def _conv_pair(c_in: int, c_out: int, **kwargs: Any) -> tuple[eqx.Module, eqx.Module]:
    """`eqx_stencil.nn.Conv2d` and `eqx.nn.Conv2d` with the same weights."""
    theirs = eqx.nn.Conv2d(c_in, c_out, key=jax.random.PRNGKey(0), **kwargs)
    ours = enn.Conv2d(c_in, c_out, key=jax.random.PRNGKey(1), **kwargs)
    ours = eqx.tree_at(lambda m: (m.weight, m.bias), ours, (theirs.weight, theirs.bias))
    return ours, theirs


def conv_case(c_in: int, c_out: int, n: int) -> RuntimeCase:
    """A 3×3 'same' Conv2d on a batch of `BATCH` `c_in`×`n`×`n` images."""
    ours, theirs = _conv_pair(c_in, c_out, kernel_size=3, padding="same")
    variants = [
        Variant(ES, jax.vmap(ours), tolerance=TOLERANCE),
        Variant(LAX, jax.vmap(theirs), tolerance=TOLERANCE),
        Variant(LAX_AGAIN, jax.vmap(theirs), tolerance=TOLERANCE),
    ]
    name = f"nn Conv2d {c_in}→{c_out} 3×3, {BATCH}×{c_in}×{n}² (lax: eqx.nn)"
    bars = (CONV_BAR, NOISE)
    return RuntimeCase(name, lambda: (_images(c_in, n),), variants, bars)


def conv_grad_case(c_in: int, c_out: int, n: int) -> RuntimeCase:
    """Gradient of a mean-square loss w.r.t. a 3×3 Conv2d's weight and bias."""
    ours, theirs = _conv_pair(c_in, c_out, kernel_size=3, padding="same")

    def grads(layer: eqx.Module) -> Any:
        def loss(params: Any, xs: Array) -> Array:
            model = eqx.combine(params, static)
            return jnp.mean(jax.vmap(model)(xs) ** 2)

        params, static = eqx.partition(layer, eqx.is_array)

        def flat_grads(xs: Array) -> Array:
            g = jax.grad(loss)(params, xs)
            return jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(g)])

        return flat_grads

    variants = [
        Variant(ES, grads(ours), tolerance=TOLERANCE),
        Variant(LAX, grads(theirs), tolerance=TOLERANCE),
        Variant(LAX_AGAIN, grads(theirs), tolerance=TOLERANCE),
    ]
    name = f"nn Conv2d grad {c_in}→{c_out} 3×3, {BATCH}×{c_in}×{n}² (lax: eqx.nn)"
    bars = (CONV_GRAD_BAR, NOISE)
    return RuntimeCase(name, lambda: (_images(c_in, n),), variants, bars)


def maxpool_case(channels: int, n: int) -> RuntimeCase:
    """MaxPool2d 2×2, stride 2, on a batch of `BATCH` images."""
    ours = enn.MaxPool2d(2, stride=2)
    theirs = eqx.nn.MaxPool2d(2, stride=2)
    variants = [Variant(ES, jax.vmap(ours)), Variant(LAX, jax.vmap(theirs))]
    name = f"nn MaxPool2d 2×2/2, {BATCH}×{channels}×{n}² (lax: eqx.nn)"
    return RuntimeCase(name, lambda: (_images(channels, n),), variants, (SPEED_BAR,))


def avgpool_case(channels: int, n: int) -> RuntimeCase:
    """AvgPool2d 3×3, stride 1, padding 1 (overlapping windows)."""
    ours = enn.AvgPool2d(3, stride=1, padding=1)
    theirs = eqx.nn.AvgPool2d(3, stride=1, padding=1)
    variants = [
        Variant(ES, jax.vmap(ours), tolerance=TOLERANCE),
        Variant(LAX, jax.vmap(theirs), tolerance=TOLERANCE),
    ]
    name = f"nn AvgPool2d 3×3/1, {BATCH}×{channels}×{n}² (lax: eqx.nn)"
    return RuntimeCase(name, lambda: (_images(channels, n),), variants, (SPEED_BAR,))


def _depthwise(taps: Array, channels: int) -> eqx.Module:
    """`eqx.nn.Conv2d` applying `taps` to every channel alone, 'same' padding."""
    conv = eqx.nn.Conv2d(
        channels,
        channels,
        kernel_size=taps.shape,
        padding="same",
        groups=channels,
        use_bias=False,
        key=jax.random.PRNGKey(0),
    )
    weight = jnp.broadcast_to(taps, (channels, 1, *taps.shape))
    return eqx.tree_at(lambda m: m.weight, conv, weight)


def depthwise_case(layer: str, channels: int, n: int) -> RuntimeCase:
    """`AverageBlur` 5×5 or the 5-point `FiniteDifference`, against the
    depthwise `eqx.nn.Conv2d` computing the same."""
    if layer == "blur":
        ours = enn.AverageBlur(channels, kernel_size=5)
        theirs = _depthwise(jnp.full((5, 5), 1 / 25), channels)
        label = "AverageBlur 5×5"
    else:
        ours = enn.FiniteDifference("laplacian_5")
        theirs = _depthwise(ours.weight, channels)
        label = "FiniteDifference 5-point"
    variants = [
        Variant(ES, jax.vmap(ours), tolerance=TOLERANCE),
        Variant(LAX, jax.vmap(theirs), tolerance=TOLERANCE),
    ]
    name = f"nn {label}, {BATCH}×{channels}×{n}² (lax: depthwise eqx.nn.Conv2d)"
    return RuntimeCase(name, lambda: (_images(channels, n),), variants, (SPEED_BAR,))
