"""2-D heat equation with a different boundary condition on each side.

One region stencil holds the whole explicit step: the five-point update in the
interior, Dirichlet rows on top (u = 1) and bottom (u = 0), and Neumann columns
(du/dx = 0) on the left and right. `lax.fori_loop` marches it in time. The
script checks one step against hand-written `jnp` slicing, checks the maximum
principle (u stays within the range of its initial and boundary values), and
checks that the field relaxes towards the steady state, the linear profile from
1 at the top to 0 at the bottom.

Run: `pip install -e ".[examples]"`, then
`python examples/heat.py [--smoke] [--out PATH]`
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


ALPHA = 0.2  # kappa * dt / dx**2; the explicit scheme is stable up to 0.25
TOP, BOTTOM = 1.0, 0.0


def make_heat_step(alpha: float, top: float, bottom: float) -> es.Stencil:
    """One explicit heat step as a stencil with four boundary regions."""

    def interior(u):
        return u[0, 0] + alpha * (u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0])

    step = es.kmap(kernel_size=(3, 3), padding="same", relative=True)
    step = step.at[1:-1, 1:-1].set(interior)
    # Dirichlet rows (corners included): fixed temperatures.
    step = step.at[0, :].set(lambda u: top).at[-1, :].set(lambda u: bottom)
    # Neumann columns: copy the inner neighbour, so du/dx = 0 across the wall.
    step = step.at[1:-1, 0].set(lambda u: u[0, 1])
    step = step.at[1:-1, -1].set(lambda u: u[0, -1])
    return step


def hand_step(u: jax.Array, alpha: float, top: float, bottom: float) -> jax.Array:
    """The same step written with `jnp` slicing."""
    c = u[1:-1, 1:-1]
    lap = u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4 * c
    new = u.at[1:-1, 1:-1].set(c + alpha * lap)
    new = new.at[0, :].set(top).at[-1, :].set(bottom)
    new = new.at[1:-1, 0].set(u[1:-1, 1]).at[1:-1, -1].set(u[1:-1, -2])
    return new


def initial_condition(n: int) -> np.ndarray:
    """A hot square and a cold disc in a lukewarm plate, values in [0, 1]."""
    y, x = np.mgrid[0:n, 0:n] / (n - 1)
    u = np.full((n, n), 0.3, dtype=np.float32)
    u[(abs(x - 0.3) < 0.12) & (abs(y - 0.6) < 0.12)] = 1.0
    u[(x - 0.7) ** 2 + (y - 0.35) ** 2 < 0.12**2] = 0.0
    u[0, :], u[-1, :] = TOP, BOTTOM
    return u


def solve(
    step: es.Stencil, u0: jax.Array, checkpoints: tuple[int, ...]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """March to each checkpoint step in turn.

    Returns the field at every checkpoint and the minimum and maximum of u over
    every step taken.
    """

    def body(_, carry):
        u, lo, hi = carry
        u = step(u)
        return u, jnp.minimum(lo, u.min()), jnp.maximum(hi, u.max())

    carry = (u0, u0.min(), u0.max())
    history = [u0]
    for start, stop in zip(checkpoints[:-1], checkpoints[1:]):
        carry = jax.lax.fori_loop(start, stop, body, carry)
        history.append(carry[0])
    return jnp.stack(history), carry[1], carry[2]


def plot(history: np.ndarray, checkpoints: tuple[int, ...], out: Path) -> None:
    fig, axes = plt.subplots(
        1, len(checkpoints), figsize=(11, 2.7), layout="constrained"
    )
    for ax, u, n in zip(axes, history, checkpoints):
        im = ax.imshow(u, cmap="inferno", vmin=0, vmax=1)
        ax.set_title(f"step {n}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="u")
    fig.suptitle("heat: u = 1 on top, u = 0 at the bottom, du/dx = 0 left and right")
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
    if args.smoke:
        n, checkpoints = 16, (0, 10, 40, 100)
    else:
        n, checkpoints = 96, (0, 200, 1000, 3000, 12000)

    start = time.perf_counter()
    step = make_heat_step(ALPHA, TOP, BOTTOM)
    u0 = initial_condition(n)

    # 1. One stencil step equals the hand-written slicing step.
    u1 = eqx.filter_jit(step)(u0)
    u1_hand = jax.jit(hand_step, static_argnums=(1, 2, 3))(u0, ALPHA, TOP, BOTTOM)
    step_err = float(np.max(np.abs(u1 - u1_hand)))

    history, lo, hi = eqx.filter_jit(solve)(step, u0, checkpoints)
    history = np.asarray(history)

    # 2. Maximum principle: no step makes a new extreme.
    lo, hi = float(lo), float(hi)
    # 3. Relaxation to the steady state, the linear profile top -> bottom.
    steady = np.linspace(TOP, BOTTOM, n)[:, None]
    distance = np.max(np.abs(history - steady), axis=(1, 2))

    if args.out is not None:
        plot(history, checkpoints, args.out)
    elapsed = time.perf_counter() - start
    print(
        f"heat {n}x{n}, {checkpoints[-1]} steps: |stencil - hand| = "
        f"{step_err:.1e}, u in [{lo:.4f}, {hi:.4f}], max |u - steady| "
        f"{float(distance[0]):.3f} -> {float(distance[-1]):.3f} ({elapsed:.1f} s)"
    )
    if step_err > 1e-6:
        raise SystemExit(f"stencil step differs from hand-written step by {step_err}")
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise SystemExit(f"maximum principle violated: u in [{lo}, {hi}]")
    if not distance[-1] < 0.5 * distance[0]:
        raise SystemExit("the field did not relax towards the steady state")


if __name__ == "__main__":
    main()
