"""The structure of compiled programs behind the speed claims (no timings).

A boundary strip's gradient must cost O(strip): the transpose of reading a
strip of the input is accumulated into the input's cotangent in place, never
padded to the whole array. So the number of whole-array pads in a compiled
gradient does not depend on how the boundary functions are written, in
particular not on a tap read only to be multiplied by 0 (kernex-style
Dirichlet rows, `0.0 * u[0, 0]`), nor on the boundary mode.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_stencil as es


N = 32
# The whole-array pads every gradient below has: the transposes of the
# interior's five taps (the tiles are concatenated, not padded into place).
INTERIOR_PADS = 5
# A one-function map of taps takes the row lowering (`_rows.py`): its inner
# rows read each tap as a slice of the flat input, and a boundary mode that
# repeats the input reads the repeated element by one more slice per tap
# that leaves the input (the two horizontal taps). It joins the rows and the
# bands above and below by a concatenation, which transposes to slices. So
# the whole-array pads are the transposes of those slices only.
ROW_MAP_PADS = {"constant": 5, "edge": 7, "reflect": 7, "symmetric": 7, "wrap": 7}
_PAD = re.compile(r"=\s*[a-z]\w*\[([\d,]*)\]\S*\s+pad\(")


def whole_array_pads(hlo_text: str, size: int) -> int:
    """How many `pad` instructions of `hlo_text` build an array of at least
    `size` elements."""
    found = 0
    for match in _PAD.finditer(hlo_text):
        dims = [int(d) for d in match.group(1).split(",") if d]
        found += math.prod(dims) >= size
    return found


def gradient_hlo(step: Callable, x: jax.Array) -> str:
    """The compiled gradient of a loss of one step's output (not linear, so
    that XLA cannot fold the gradient into a constant)."""

    def loss(u: jax.Array) -> jax.Array:
        return jnp.sum(jnp.sin(step(u)))

    hlo = jax.jit(jax.grad(loss)).lower(x).compile().as_text()
    assert hlo is not None
    return hlo


def interior(u):
    return u[0, 0] + 0.1 * (u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0])


def heat(rows: Callable) -> es.Stencil:
    """The heat step of the README: Dirichlet rows written as `rows`."""
    return (
        es.kmap(kernel_size=(3, 3), padding="same", relative=True)
        .at[1:-1, 1:-1]
        .set(interior)
        .at[0, :]
        .set(rows)
        .at[-1, :]
        .set(rows)
        .at[:, 0]
        .set(lambda u: u[0, 1])
        .at[:, -1]
        .set(lambda u: u[0, -1])
    )


DIRICHLET = {
    "constant": lambda u: 0.0,
    "kernex-style": lambda u: 0.0 * u[0, 0],
    "times zero": lambda u: u[0, 0] * 0,
    "zeros_like": lambda u: jnp.zeros_like(u[0, 0]),
    "whole window": lambda u: 0.0 * jnp.sum(u),
    "neumann": lambda u: u[1, 0],
    "nonlinear": lambda u: jnp.sin(u[0, 1]) * u[-1, 0],
}


def _field() -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).normal(size=(N, N)), jnp.float32)


@pytest.mark.parametrize("name", list(DIRICHLET))
def test_boundary_function_adds_no_whole_array_pad_to_the_gradient(name):
    x = _field()
    expected = whole_array_pads(gradient_hlo(heat(DIRICHLET["constant"]), x), N * N)
    found = whole_array_pads(gradient_hlo(heat(DIRICHLET[name]), x), N * N)
    assert found == expected == INTERIOR_PADS, (name, found, expected)


@pytest.mark.parametrize(
    "boundary", ["constant", "edge", "reflect", "symmetric", "wrap"]
)
def test_boundary_mode_adds_no_whole_array_pad_to_the_gradient(boundary):
    """A Laplacian's bands are read from the input in every mode (the wrap
    band from both ends); the whole-array pads are the transposes of the
    inner rows' slices (`ROW_MAP_PADS`)."""
    x = _field()
    lap = lambda u: u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]  # noqa: E731
    stencil = es.kmap(
        lap, kernel_size=3, padding="same", relative=True, boundary=boundary
    )
    found = whole_array_pads(gradient_hlo(stencil, x), N * N)
    assert found == ROW_MAP_PADS[boundary], (boundary, found)


def test_one_function_map_is_one_loop():
    """The interior and the boundary strips of a one-function map compile to
    one fused loop (the hand-written pad + slices take two)."""
    lap = lambda u: u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]  # noqa: E731
    stencil = es.kmap(lap, kernel_size=3, padding="same", relative=True)
    hlo = jax.jit(stencil).lower(_field()).compile().as_text()
    assert hlo is not None
    assert hlo.count(" fusion(") == 1, hlo


def test_vmap_compiles_the_kernels_of_one_call():
    """A multi-region map's tiles are concatenated (`_assemble.tile_together`):
    JAX would batch a tile written in place as a `scatter`, which XLA:CPU
    does not fuse into the loop that consumes it. So a batch of the heat step
    compiles to the kernels of one step, none a scatter."""
    stencil = heat(DIRICHLET["constant"])
    x = _field()
    single = jax.jit(stencil).lower(x).compile().as_text()
    batched = jax.jit(jax.vmap(stencil)).lower(jnp.stack([x, -x])).compile().as_text()
    assert single is not None and batched is not None
    assert "scatter" not in batched, batched
    assert batched.count(" fusion(") == single.count(" fusion("), batched


@pytest.mark.parametrize("name", ["kernex-style", "nonlinear"])
def test_cheap_gradient_is_the_gradient(name):
    """The in-place accumulation changes the program, not the numbers."""
    x = _field()
    stencil = heat(DIRICHLET[name])
    grad = jax.jit(jax.grad(lambda u: jnp.sum(jnp.asarray(stencil(u)) ** 2)))(x)

    def plain(u: jax.Array) -> jax.Array:
        rows = jax.vmap(jax.vmap(lambda w: DIRICHLET[name](_Relative(w))))
        padded = jnp.pad(u, 1)
        windows = jnp.stack(
            [padded[i : i + N, j : j + N] for i in range(3) for j in range(3)], -1
        ).reshape(N, N, 3, 3)
        out = jax.vmap(jax.vmap(lambda w: interior(_Relative(w))))(windows)
        out = (
            out.at[0, :].set(rows(windows[:1])[0]).at[-1, :].set(rows(windows[-1:])[0])
        )
        out = out.at[:, 0].set(windows[:, 0, 1, 2]).at[:, -1].set(windows[:, -1, 1, 0])
        return out

    expected = jax.jit(jax.grad(lambda u: jnp.sum(plain(u) ** 2)))(x)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


class _Relative:
    """A 3x3 window indexed relative to its centre (for the plain version)."""

    def __init__(self, window: jax.Array):
        self.window = window

    def __getitem__(self, key: tuple[int, int]) -> jax.Array:
        return self.window[key[0] + 1, key[1] + 1]
