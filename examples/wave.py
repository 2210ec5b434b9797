"""2-D wave equation, leapfrog in time: a wave packet through a double slit.

u_tt = c^2 (u_xx + u_yy) with the leapfrog scheme
u^{n+1} = 2 u^n - u^{n-1} + C^2 lap(u^n), C = c dt / dx. The state is the pair
of time levels `(u^{n-1}, u^n)`; a multi-field stencil maps it to
`(u^n, u^{n+1})` in one call. The walls are fixed (u = 0): the domain edge by
zero padding, and a screen with two slits by a region given as a NumPy
boolean mask, `.at[mask].set(...)`.

The script checks one step against hand-written `jnp` slicing, that the screen
stays at rest, and that the leapfrog scheme's discrete energy is conserved.

Run: `pip install -e ".[examples]"`, then
`python examples/wave.py [--smoke] [--out PATH]`
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


COURANT = 0.5  # c dt / dx; leapfrog in 2-D is stable up to 1/sqrt(2)
C2 = COURANT**2

State = tuple[jax.Array, jax.Array]  # (u^{n-1}, u^n)


def double_slit(n: int) -> np.ndarray:
    """A static mask: a screen at x = 0.4 n with two slits around the centre."""
    mask = np.zeros((n, n), dtype=bool)
    col, gap, width = int(0.4 * n), n // 6, max(n // 64, 1)
    mask[:, col] = True
    for centre in (n // 2 - gap // 2, n // 2 + gap // 2):
        mask[centre - width : centre + width + 1, col] = False
    return mask


def make_step(screen: np.ndarray) -> es.Stencil:
    """(u^{n-1}, u^n) -> (u^n, u^{n+1}); zero padding = fixed domain edge."""

    def leapfrog(w):
        prev, u = w
        lap = u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]
        return u[0, 0], 2 * u[0, 0] - prev[0, 0] + C2 * lap

    step = es.kmap(leapfrog, kernel_size=(3, 3), padding="same", relative=True)
    return step.at[screen].set(lambda w: (0.0, 0.0))  # the screen never moves


def hand_step(state: State, screen: np.ndarray) -> State:
    """The same step with `jnp` slicing."""
    prev, u = state
    p = jnp.pad(u, 1)
    lap = p[2:, 1:-1] + p[:-2, 1:-1] + p[1:-1, 2:] + p[1:-1, :-2] - 4 * u
    new = jnp.where(screen, 0.0, 2 * u - prev + C2 * lap)
    return jnp.where(screen, 0.0, u), new


def energy(state: State) -> jax.Array:
    """The discrete energy leapfrog conserves exactly (up to rounding):
    |u^n - u^{n-1}|^2 + C^2 <grad u^n, grad u^{n-1}>, with u = 0 outside."""
    prev, u = state
    pp, pu = jnp.pad(prev, 1), jnp.pad(u, 1)
    kinetic = jnp.sum((u - prev) ** 2)
    potential = sum(
        jnp.sum(jnp.diff(pu, axis=a) * jnp.diff(pp, axis=a)) for a in (0, 1)
    )
    return kinetic + C2 * potential


def plane_wave(n: int) -> State:
    """A plane wave packet moving right: u(x, t) = f(x - c t), x in cells."""
    x = np.arange(n)
    wavelength, centre, width = n / 20, 0.18 * n, n / 14

    def f(s):
        envelope = np.exp(-(((s - centre) / width) ** 2))
        wave = envelope * np.cos(2 * np.pi * (s - centre) / wavelength)
        return jnp.asarray(np.broadcast_to(wave, (n, n)), dtype=jnp.float32)

    return f(x + COURANT), f(x)  # one step back in time: c dt = COURANT cells


def run(
    step: es.Stencil, state: State, checkpoints: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
    """u at each checkpoint step and the energy after every step."""

    def body(state, _):
        state = step(state)
        return state, energy(state)

    frames, energies = [state[1]], [energy(state)[None]]
    for start, stop in zip(checkpoints[:-1], checkpoints[1:]):
        state, e = jax.lax.scan(body, state, length=stop - start)
        frames.append(state[1])
        energies.append(e)
    return jnp.stack(frames), jnp.concatenate(energies)


def plot(
    frames: jax.Array, screen: np.ndarray, checkpoints: tuple[int, ...], out: Path
) -> None:
    fig, axes = plt.subplots(
        1, len(checkpoints), figsize=(11, 3.0), layout="constrained"
    )
    wall = np.ma.masked_where(~screen, screen)
    for ax, u, n in zip(axes, frames, checkpoints):
        ax.imshow(u, cmap="RdBu_r", vmin=-0.3, vmax=0.3)
        ax.imshow(wall, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"step {n}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("wave equation, leapfrog: a plane wave packet through a double slit")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
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
        n, checkpoints = 32, (0, 10, 20, 30)
    else:
        n, checkpoints = 256, (0, 180, 280, 380)

    start = time.perf_counter()
    screen = double_slit(n)
    step = make_step(screen)
    state = plane_wave(n)

    new = eqx.filter_jit(step)(state)
    new_hand = jax.jit(hand_step)(state, screen)
    step_err = max(float(np.max(np.abs(a - b))) for a, b in zip(new, new_hand))

    frames, energies = map(np.asarray, eqx.filter_jit(run)(step, state, checkpoints))
    drift = float(np.max(np.abs(energies - energies[0])) / energies[0])
    screen_motion = float(np.max(np.abs(frames[1:, screen])))  # after step 0

    if args.out is not None:
        plot(frames, screen, checkpoints, args.out)
    elapsed = time.perf_counter() - start
    print(
        f"wave {n}x{n}, {checkpoints[-1]} steps: |stencil - hand| = {step_err:.1e}, "
        f"relative energy drift {drift:.1e}, max |u| on the screen "
        f"{screen_motion:.1e} ({elapsed:.1f} s)"
    )
    if step_err > 1e-6:
        raise SystemExit(f"stencil step differs from hand-written step by {step_err}")
    if screen_motion != 0:
        raise SystemExit("the screen moved")
    if drift > 1e-3:
        raise SystemExit(f"energy not conserved: relative drift {drift}")


if __name__ == "__main__":
    main()
