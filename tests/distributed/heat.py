"""The heat solver of the 2-process test: shared by the workers and the
single-process reference in `tests/test_distributed.py`."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

import eqx_stencil as es


GRID = (16, 16)
STEPS = 10
KAPPA = 0.2
TOP, BOTTOM = 1.0, 0.0


def initial_field() -> np.ndarray:
    """A smooth field with the Dirichlet rows already in place."""
    y, x = np.mgrid[0 : GRID[0], 0 : GRID[1]] / np.array(GRID)[:, None, None]
    u = (0.5 + 0.4 * np.sin(2 * np.pi * x) * np.cos(np.pi * y)).astype(np.float32)
    u[0, :], u[-1, :] = TOP, BOTTOM
    return u


def _interior(u: Array, kappa: Array) -> Array:
    return u[0, 0] + kappa * (u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0])


STEP = (
    es.kmap(_interior, kernel_size=(3, 3), padding="same", relative=True)
    .at[0, :]
    .set(lambda u, kappa: jnp.full_like(u[0, 0], TOP))
    .at[-1, :]
    .set(lambda u, kappa: jnp.full_like(u[0, 0], BOTTOM))
)
"""One explicit step: the 5-point update, Dirichlet rows on top and bottom,
zeros beyond the left and right sides."""


def solve(u: Array, kappa: Array) -> Array:
    """`STEPS` steps of `STEP`."""
    return es.iterate(lambda v: STEP(v, kappa), u, STEPS)


def loss(u: Array, kappa: Array) -> Array:
    """A scalar of the final field, to differentiate w.r.t. `kappa`."""
    return jnp.sum(solve(u, kappa) ** 2)


def hand_written_step(u: Array) -> Array:
    """One 5-point step as `jax.shard_map` + `lax.ppermute` over the current
    mesh's axes `("x", "y")`, zeros beyond the global edges and no Dirichlet
    rows: shows that the collectives work, without eqx_stencil."""
    mesh = jax.sharding.get_abstract_mesh()

    def pairs(axis: str, shift: int) -> list[tuple[int, int]]:
        n = mesh.shape[axis]
        return [(i, i + shift) for i in range(n) if 0 <= i + shift < n]

    def local(block: Array) -> Array:
        above = lax.ppermute(block[-1:], "x", pairs("x", 1))
        below = lax.ppermute(block[:1], "x", pairs("x", -1))
        block = jnp.concatenate([above, block, below], axis=0)
        left = lax.ppermute(block[:, -1:], "y", pairs("y", 1))
        right = lax.ppermute(block[:, :1], "y", pairs("y", -1))
        block = jnp.concatenate([left, block, right], axis=1)
        c = block[1:-1, 1:-1]
        lap = block[2:, 1:-1] + block[:-2, 1:-1] + block[1:-1, 2:] + block[1:-1, :-2]
        return c + KAPPA * (lap - 4 * c)

    spec = jax.sharding.PartitionSpec("x", "y")
    return jax.shard_map(local, in_specs=spec, out_specs=spec)(u)
