"""Conway's Game of Life on a torus, one `es.kmap` call per generation.

A cell's next state depends on itself and its eight neighbours: a 3x3 stencil
with `padding="same"` and `boundary="wrap"` (periodic edges). The script checks
that a glider moves by one cell down and one right every 4 generations and
comes back to where it started after 4 n generations on an n x n torus, and
that a random soup evolves exactly as a hand-written `jnp.roll` version.

Run: `pip install -e ".[examples]"`, then
`python examples/game_of_life.py [--smoke] [--out PATH]`
(`--out PATH`: save the picture there).
"""

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eqx_stencil as es  # noqa: E402


GLIDER = np.array([[0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=np.uint8)


@es.kmap(kernel_size=(3, 3), padding="same", boundary="wrap", relative=True)
def life(cell):
    """Born with 3 live neighbours, survives with 2 or 3."""
    neighbours = cell.sum() - cell[0, 0]
    alive = (neighbours == 3) | ((cell[0, 0] == 1) & (neighbours == 2))
    return alive.astype(jnp.uint8)


def hand_life(board: jax.Array) -> jax.Array:
    """The same rule with `jnp.roll`."""
    neighbours = sum(
        jnp.roll(board, (di, dj), axis=(0, 1))
        for di in (-1, 0, 1)
        for dj in (-1, 0, 1)
        if (di, dj) != (0, 0)
    )
    alive = (neighbours == 3) | ((board == 1) & (neighbours == 2))
    return alive.astype(jnp.uint8)


def evolve(board: jax.Array, generations: int) -> jax.Array:
    return jax.lax.fori_loop(0, generations, lambda i, b: life(b), board)


def history(board: jax.Array, generations: int) -> jax.Array:
    """Every generation, shape (generations + 1, n, n)."""

    def generation(b, _):
        b = life(b)
        return b, b

    _, boards = jax.lax.scan(generation, board, length=generations)
    return jnp.concatenate([board[None], boards])


def plot(boards: np.ndarray, picks: tuple[int, ...], out: Path) -> None:
    fig = plt.figure(figsize=(12, 3.1), layout="constrained")
    axes = fig.subplots(1, len(picks) + 1, width_ratios=[1] * len(picks) + [1.4])
    for ax, g in zip(axes, picks):
        ax.imshow(boards[g], cmap="binary", interpolation="nearest")
        ax.set_title(f"generation {g}")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].plot(boards.sum(axis=(1, 2)))
    axes[-1].set_xlabel("generation")
    axes[-1].set_ylabel("live cells")
    axes[-1].set_title("population")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny board, few steps")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="save the picture to PATH (by default none is written)",
    )
    args = parser.parse_args()
    n, generations = (24, 40) if args.smoke else (96, 600)

    start = time.perf_counter()
    run = eqx.filter_jit(evolve)

    # 1. A glider moves by (1, 1) every 4 generations, and around the torus.
    board = np.zeros((n, n), np.uint8)
    board[1:4, 1:4] = GLIDER
    moved = np.array_equal(run(board, 4), np.roll(board, (1, 1), (0, 1)))
    home = np.array_equal(run(board, 4 * n), board)

    # 2. A random soup evolves as in the hand-written version.
    soup = (np.random.default_rng(0).random((n, n)) < 0.3).astype(np.uint8)
    boards = np.asarray(eqx.filter_jit(history)(soup, generations))
    hand = jax.jit(
        lambda b: jax.lax.fori_loop(0, generations, lambda i, c: hand_life(c), b)
    )
    same = np.array_equal(boards[-1], hand(soup))

    picks = (0, 1, generations // 10, generations)
    if args.out is not None:
        plot(boards, picks, args.out)
    elapsed = time.perf_counter() - start
    print(
        f"game of life {n}x{n}: glider moved by (1, 1) in 4 generations: {moved}, "
        f"back home after {4 * n}: {home}; soup after {generations} generations "
        f"equals jnp.roll version: {same}, population "
        f"{int(boards[0].sum())} -> {int(boards[-1].sum())} ({elapsed:.1f} s)"
    )
    if not (moved and home):
        raise SystemExit("the glider did not glide")
    if not same:
        raise SystemExit("the stencil differs from the jnp.roll version")


if __name__ == "__main__":
    main()
