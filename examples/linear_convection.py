"""Linear convection with `es.kscan`: a whole time-marching scheme in one call.

The kernex README example (CFD Python, step 1): u_t + c u_x = 0 on [0, 2] with
a square wave, first-order upwind in space, explicit in time. The array has
time on axis 0 and space on axis 1; `es.kscan` visits its cells in row-major
order and writes each result back before the next cell is read, so the update
of row n reads row n - 1 already computed. Regions set the initial row (kept
from the input) and the inflow/outflow columns (u = 1).

The script checks the sweep against a hand-written `lax.scan` over rows, that
the mass of the wave, sum((u - 1) dx), is conserved, and that its centre of
mass moves at speed c (both exact for the upwind scheme while the wave stays
inside the domain).

Run: `pip install -e ".[examples]"`, then
`python examples/linear_convection.py [--smoke] [--out PATH]`
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


C, TMAX, XMAX = 0.5, 0.5, 2.0  # wave speed, final time, domain length


def make_sweep(courant: float) -> es.Stencil:
    """All time steps of the upwind scheme as one sequential stencil sweep."""

    def upwind(u):
        return u["i", "n-1"] - courant * (u["i", "n-1"] - u["i-1", "n-1"])

    sweep = es.kscan(
        kernel_size=(3, 3),
        padding=1,
        named_axis={0: "n", 1: "i"},
        relative=True,
    )
    sweep = sweep.at[0, :].set(lambda u: u["n", "i"])  # initial condition
    sweep = sweep.at[1:, 1:-1].set(upwind)
    return sweep.at[1:, 0].set(lambda u: 1.0).at[1:, -1].set(lambda u: 1.0)


def hand_sweep(u0: jax.Array, nt: int, courant: float) -> jax.Array:
    """The same scheme as a `lax.scan` over time steps, with `jnp` slicing."""

    def step(u, _):
        new = u.at[1:-1].set(u[1:-1] - courant * (u[1:-1] - u[:-2]))
        new = new.at[0].set(1.0).at[-1].set(1.0)
        return new, new

    _, rows = jax.lax.scan(step, u0, length=nt - 1)
    return jnp.concatenate([u0[None], rows])


def square_wave(nx: int) -> np.ndarray:
    """u = 2 on [0.5, 1), 1 elsewhere (the kernex README's initial condition)."""
    u = np.ones(nx, dtype=np.float32)
    u[(nx - 1) // 4 + 1 : (nx - 1) // 2] = 2.0
    return u


def plot(x: np.ndarray, u: np.ndarray, dt: float, every: int, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
    rows = range(0, len(u), every)
    colors = plt.cm.viridis(np.linspace(0, 1, len(rows)))
    for n, color in zip(rows, colors):
        ax.plot(x, u[n], color=color, label=f"t = {n * dt:.2f}")
    ax.set_xlabel("x")
    ax.set_ylabel("u")
    ax.set_title(f"linear convection, c = {C}: one es.kscan call, {len(u)} time rows")
    ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="fewer time steps")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="save the picture to PATH (by default none is written)",
    )
    args = parser.parse_args()
    nt, nx = (31, 51) if args.smoke else (151, 51)  # full: the kernex README's
    tmax = TMAX * (nt - 1) / 150  # same dt in both modes
    dt, dx = tmax / (nt - 1), XMAX / (nx - 1)
    courant = C * dt / dx

    start = time.perf_counter()
    x = np.linspace(0, XMAX, nx)
    u0 = square_wave(nx)
    grid = np.ones((nt, nx), dtype=np.float32)
    grid[0] = u0  # rows 1: are overwritten by the sweep
    u = np.asarray(eqx.filter_jit(make_sweep(courant))(grid))
    u_hand = np.asarray(jax.jit(hand_sweep, static_argnums=(1, 2))(u0, nt, courant))
    err = float(np.max(np.abs(u - u_hand)))

    mass = np.sum(u - 1, axis=1) * dx
    centre = np.sum(x * (u - 1), axis=1) * dx / mass
    mass_drift = float(np.max(np.abs(mass - mass[0])) / mass[0])
    speed = float((centre[-1] - centre[0]) / tmax)

    if args.out is not None:
        plot(x, u, dt, max(1, (nt - 1) // 6), args.out)
    elapsed = time.perf_counter() - start
    print(
        f"linear convection {nt}x{nx}: |kscan - lax.scan| = {err:.1e}, mass drift "
        f"{mass_drift:.1e}, centre speed {speed:.5f} (c = {C}) ({elapsed:.1f} s)"
    )
    if err > 1e-5:
        raise SystemExit(f"kscan differs from the hand-written scan by {err}")
    if mass_drift > 1e-5:
        raise SystemExit(f"mass not conserved: relative drift {mass_drift}")
    if abs(speed - C) > 1e-3:
        raise SystemExit(f"the wave moves at {speed}, not at c = {C}")


if __name__ == "__main__":
    main()
