"""Heat flow around a batch of random obstacles: one program for every geometry.

A plate is heated on its left edge (u = 1) and cooled on its right edge
(u = 0); its top and bottom edges are insulated (du/dy = 0), and a few discs
inside it are held cold (u = 0). The discs are a boolean `jax.Array` given to
the stencil as data, `step.at[obstacles].set(cold)`, so `jax.vmap` runs a whole
batch of random geometries as one compiled program, and a second batch of new
geometries reuses it. The script checks the batch against a hand-written
`jnp.where` solver, checks that it was compiled once, and checks the maximum
principle (u stays in [0, 1]).

Run: `pip install -e ".[examples]"`, then
`python examples/obstacles.py [--smoke] [--out PATH]`
(`--out PATH`: save the picture there).
"""

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eqx_stencil as es  # noqa: E402


ALPHA = 0.24  # kappa * dt / dx**2; the explicit scheme is stable up to 0.25


def interior(u):
    return u[0, 0] + ALPHA * (u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0])


def make_step(obstacles: jax.Array) -> es.Stencil:
    """One explicit step; `obstacles` (a boolean array, traced or not) is data."""
    step = es.kmap(interior, kernel_size=(3, 3), padding="same", relative=True)
    step = step.at[0, :].set(lambda u: u[1, 0]).at[-1, :].set(lambda u: u[-1, 0])
    step = step.at[:, 0].set(lambda u: 1.0).at[:, -1].set(lambda u: 0.0)
    return step.at[obstacles].set(lambda u: 0.0)


def hand_step(u: jax.Array, obstacles: jax.Array) -> jax.Array:
    """The same step with `jnp` slicing and `jnp.where`."""
    c = u[1:-1, 1:-1]
    lap = u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4 * c
    new = u.at[1:-1, 1:-1].set(c + ALPHA * lap)
    new = new.at[0, :].set(u[1, :]).at[-1, :].set(u[-2, :])
    new = new.at[:, 0].set(1.0).at[:, -1].set(0.0)
    return jnp.where(obstacles, 0.0, new)


def random_obstacles(key: jax.Array, batch: int, n: int, discs: int) -> jax.Array:
    """`batch` masks of `discs` random discs each, in the middle of the plate."""
    centres, radii = jax.random.split(key)
    centre = jax.random.uniform(centres, (batch, discs, 2), minval=0.2, maxval=0.8)
    radius = jax.random.uniform(radii, (batch, discs), minval=0.04, maxval=0.12)
    y, x = jnp.mgrid[0:n, 0:n] / (n - 1)
    inside = (y - centre[..., 0, None, None]) ** 2 + (
        x - centre[..., 1, None, None]
    ) ** 2 < radius[..., None, None] ** 2
    return inside.any(axis=1)


def plot(fields: np.ndarray, masks: np.ndarray, out: Path) -> None:
    count = len(fields)
    fig, axes = plt.subplots(
        1, count, figsize=(2.4 * count, 2.6), layout="constrained", squeeze=False
    )
    for ax, u, mask in zip(axes[0], fields, masks):
        im = ax.imshow(u, cmap="inferno", vmin=0, vmax=1)
        ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="u")
    fig.suptitle("heat around random cold obstacles: one vmapped program")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny grid, few steps")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="save the picture to PATH (by default none is written)",
    )
    args = parser.parse_args()
    n, batch, steps = (24, 3, 50) if args.smoke else (96, 6, 20000)

    start = time.perf_counter()
    traces = []

    def solve(obstacles: jax.Array, u0: jax.Array) -> jax.Array:
        traces.append(None)  # runs once per compilation
        return es.iterate(make_step(obstacles), u0, steps)

    def hand_solve(obstacles: jax.Array, u0: jax.Array) -> jax.Array:
        return es.iterate(lambda u: hand_step(u, obstacles), u0, steps)

    solve_batch = jax.jit(jax.vmap(solve, in_axes=(0, None)))
    hand_batch = jax.jit(jax.vmap(hand_solve, in_axes=(0, None)))
    u0 = jnp.zeros((n, n))
    first, second = jax.random.split(jax.random.key(0))
    masks = random_obstacles(first, batch, n, discs=4)
    fields = solve_batch(masks, u0)
    again = solve_batch(random_obstacles(second, batch, n, discs=4), u0)
    jax.block_until_ready(again)

    # 1. The batch equals the hand-written jnp.where solver.
    error = float(jnp.max(jnp.abs(fields - hand_batch(masks, u0))))
    # 2. One compiled program for both batches of geometries.
    compilations = len(traces)
    # 3. Maximum principle, and the obstacles stay cold.
    lo, hi = float(fields.min()), float(fields.max())
    obstacle_max = float(jnp.max(jnp.where(masks, fields, 0.0)))

    if args.out is not None:
        plot(np.asarray(fields), np.asarray(masks), args.out)
    elapsed = time.perf_counter() - start
    print(
        f"obstacles {batch} x {n}x{n}, {steps} steps: |stencil - hand| = "
        f"{error:.1e}, compilations {compilations}, u in [{lo:.4f}, {hi:.4f}], "
        f"max u on obstacles {obstacle_max:.1e} ({elapsed:.1f} s)"
    )
    if error > 1e-5:
        raise SystemExit(
            f"the stencil solver differs from the hand-written one: {error}"
        )
    if compilations != 1:
        raise SystemExit(
            f"expected one compilation for every geometry, got {compilations}"
        )
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise SystemExit(f"maximum principle violated: u in [{lo}, {hi}]")
    if obstacle_max != 0.0:
        raise SystemExit(f"an obstacle warmed up: u = {obstacle_max}")


if __name__ == "__main__":
    main()
