"""2-D viscous Burgers equation: a two-field system in one multi-field stencil.

The velocity `(u, v)` is a dict of two fields; the stencil's function receives
the same dict of windows and returns the dict of updated fields. Advection is
first-order upwind, diffusion the 5-point Laplacian, time stepping explicit
Euler on a periodic domain (`boundary="wrap"`). The script checks one step
against the same scheme hand-written with `jnp.roll`, and that the kinetic
energy decays (viscosity and upwinding only remove energy).

Run: `pip install -e ".[examples]"`, then
`python examples/burgers.py [--smoke] [--out PATH]`
(`--out PATH`: save the picture there).
"""

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eqx_stencil as es  # noqa: E402


NU = 0.01  # viscosity
DX = 1.0 / 64  # grid spacing (the domain is the unit square, periodic)


def upwind(c: jax.Array, back: jax.Array, centre: jax.Array, ahead: jax.Array):
    """`c * d(field)/dx`, differenced against the flow."""
    return jnp.where(c > 0, c * (centre - back), c * (ahead - centre)) / DX


def make_step(dt: float) -> es.Stencil:
    """One explicit Burgers step for the fields `{"u": ..., "v": ...}`."""

    def step(w):
        new = {}
        u0, v0 = w["u"][0, 0], w["v"][0, 0]
        for name, f in w.items():
            advection = upwind(u0, f[0, -1], f[0, 0], f[0, 1]) + upwind(
                v0, f[-1, 0], f[0, 0], f[1, 0]
            )
            lap = (f[1, 0] + f[-1, 0] + f[0, 1] + f[0, -1] - 4 * f[0, 0]) / DX**2
            new[name] = f[0, 0] + dt * (NU * lap - advection)
        return new

    return es.kmap(
        step, kernel_size=(3, 3), padding="same", relative=True, boundary="wrap"
    )


def hand_step(fields: dict, dt: float) -> dict:
    """The same scheme with `jnp.roll` (axis 0: y, axis 1: x)."""
    u0, v0 = fields["u"], fields["v"]
    new = {}
    for name, f in fields.items():
        east, west = jnp.roll(f, -1, 1), jnp.roll(f, 1, 1)
        north, south = jnp.roll(f, -1, 0), jnp.roll(f, 1, 0)
        advection = upwind(u0, west, f, east) + upwind(v0, south, f, north)
        lap = (north + south + east + west - 4 * f) / DX**2
        new[name] = f + dt * (NU * lap - advection)
    return new


def initial_condition(n: int) -> dict:
    """A smooth swirl plus a jet: periodic, of unit speed scale."""
    y, x = jnp.meshgrid(
        jnp.arange(n) / n, jnp.arange(n) / n, indexing="ij"
    )  # unit square
    u = jnp.sin(2 * jnp.pi * y) + 0.5 * jnp.exp(-((y - 0.5) ** 2) / 0.01)
    v = 0.5 * jnp.sin(2 * jnp.pi * x) * jnp.cos(2 * jnp.pi * y)
    return {"u": u, "v": v}


def energy(fields: dict) -> jax.Array:
    return 0.5 * jnp.mean(fields["u"] ** 2 + fields["v"] ** 2)


def plot(history: list[dict], snapshots: tuple[int, ...], n: int, out: Path) -> None:
    fig, axes = plt.subplots(
        1, len(history), figsize=(3 * len(history), 3), layout="constrained"
    )
    for ax, f, count in zip(axes, history, snapshots):
        speed = jnp.hypot(f["u"], f["v"])
        ax.imshow(speed, cmap="viridis", origin="lower", vmin=0, vmax=1.5)
        skip = n // 16
        ax.quiver(
            jnp.arange(0, n, skip),
            jnp.arange(0, n, skip),
            f["u"][::skip, ::skip],
            f["v"][::skip, ::skip],
            color="white",
            scale=25,
        )
        ax.set_title(f"step {count}, E = {energy(f):.3f}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("2-D Burgers: speed |(u, v)| and velocity, one two-field stencil")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="few steps")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="save the picture to PATH (by default none is written)",
    )
    args = parser.parse_args()
    n = 64
    dt = 0.2 * DX  # CFL 0.2 at unit speed; diffusion number NU*dt/DX**2 ~ 0.13
    snapshots = (0, 20, 40) if args.smoke else (0, 100, 200, 400)

    start = time.perf_counter()
    step = make_step(dt)
    fields = initial_condition(n)

    one = eqx.filter_jit(step)(fields)
    hand = hand_step(fields, dt)
    step_err = max(float(jnp.max(jnp.abs(one[k] - hand[k]))) for k in fields)

    @eqx.filter_jit
    def advance(step, fields, count):
        return jax.lax.fori_loop(0, count, lambda _, f: step(f), fields)

    history, energies = [fields], [float(energy(fields))]
    for begin, end in zip(snapshots[:-1], snapshots[1:]):
        fields = advance(step, fields, end - begin)
        history.append(fields)
        energies.append(float(energy(fields)))

    if args.out is not None:
        plot(history, snapshots, n, args.out)

    elapsed = time.perf_counter() - start
    print(
        f"burgers {n}x{n}, {snapshots[-1]} steps: |stencil - hand| = {step_err:.1e}, "
        f"energy {energies[0]:.4f} -> {energies[-1]:.4f} ({elapsed:.1f} s)"
    )
    if step_err > 1e-5:
        raise SystemExit(f"stencil step differs from the hand-written one: {step_err}")
    if any(b > a for a, b in zip(energies, energies[1:])):
        raise SystemExit(f"kinetic energy grew: {energies}")


if __name__ == "__main__":
    main()
