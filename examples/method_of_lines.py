"""Method of lines: a stencil as the vector field of a `diffrax` ODE solve.

The 1-D heat equation u_t = D u_xx on (0, 1) with u = 0 at both ends becomes,
after discretising space on n interior points, the ODE system
du/dt = D (u[i+1] - 2 u[i] + u[i-1]) / dx^2. The right-hand side is a
three-point stencil whose zero padding is the Dirichlet boundary; `diffrax`
integrates it in time with `Tsit5` and an adaptive step size.

The script checks the stencil vector field against hand-written slicing, checks
the ODE solution against the exact solution of the semi-discrete system (each
sine mode decays at the rate of the discrete Laplacian's eigenvalue), and
compares it with the exact solution of the PDE,
u = exp(-D pi^2 t) sin(pi x) + 0.5 exp(-9 D pi^2 t) sin(3 pi x): in full mode,
the error must fall as dx^2 when the grid is refined (a second-order scheme).

Run: `pip install -e ".[examples]"`, then
`python examples/method_of_lines.py [--smoke] [--out PATH]`
(`--out PATH`: save the picture there).
"""

import argparse
import time
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np


jax.config.update("jax_enable_x64", True)  # keep time-stepping error far below dx^2
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eqx_stencil as es  # noqa: E402


D, T_END = 1.0, 0.1  # diffusivity, final time


@es.kmap(kernel_size=3, padding="same", relative=True)  # zero padding: u = 0 ends
def second_difference(u):
    return u[1] - 2 * u[0] + u[-1]


def vector_field(t: jax.Array, u: jax.Array, dx: float) -> jax.Array:
    return D * second_difference(u) / dx**2


def hand_vector_field(t: jax.Array, u: jax.Array, dx: float) -> jax.Array:
    p = jnp.pad(u, 1)
    return D * (p[2:] - 2 * u + p[:-2]) / dx**2


def exact(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The PDE's solution (NumPy, float64)."""
    return np.exp(-D * np.pi**2 * t) * np.sin(np.pi * x) + 0.5 * np.exp(
        -9 * D * np.pi**2 * t
    ) * np.sin(3 * np.pi * x)


def exact_semi_discrete(x: np.ndarray, t: np.ndarray, dx: float) -> np.ndarray:
    """The ODE system's solution: mode k decays at the rate
    (4 D / dx^2) sin^2(k pi dx / 2) instead of D (k pi)^2."""
    rate = lambda k: 4 * D / dx**2 * np.sin(k * np.pi * dx / 2) ** 2  # noqa: E731
    return np.exp(-rate(1) * t) * np.sin(np.pi * x) + 0.5 * np.exp(
        -rate(3) * t
    ) * np.sin(3 * np.pi * x)


def grid(n: int) -> tuple[np.ndarray, float]:
    """n interior points of (0, 1) and their spacing."""
    dx = 1.0 / (n + 1)
    return np.arange(1, n + 1) * dx, dx


@jax.jit
def solve(u0: jax.Array, dx: float, ts: jax.Array) -> jax.Array:
    """u at the times `ts`, shape (len(ts), n)."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        diffrax.Tsit5(),
        t0=ts[0],
        t1=ts[-1],
        dt0=1e-5,
        y0=u0,
        args=dx,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
        max_steps=100_000,
    )
    return sol.ys


def plot(
    x: np.ndarray,
    ts: np.ndarray,
    us: np.ndarray,
    sizes: tuple[int, ...],
    errors: list[float],
    out: Path,
) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.3), layout="constrained")
    fine = np.linspace(0, 1, 200)
    for k, (t, u) in enumerate(zip(ts, us)):
        ax1.plot(fine, exact(fine, t), color=f"C{k}", lw=1)
        ax1.plot(x, u, "o", color=f"C{k}", ms=3, label=f"t = {t:.3f}")
    ax1.set_xlabel("x")
    ax1.set_ylabel("u")
    ax1.set_title(f"n = {len(x)}: stencil + Tsit5 (dots), exact (lines)")
    ax1.set_ylim(-0.22, 1.15)
    ax1.legend(fontsize=7, loc="lower center", ncol=3)
    h = np.array([1.0 / (n + 1) for n in sizes])
    ax2.loglog(h, errors, "o-", label="max error at t_end")
    ax2.loglog(h, errors[0] * (h / h[0]) ** 2, "k:", label="slope 2")
    ax2.set_xlabel("dx")
    ax2.set_ylabel("error")
    ax2.set_title("second-order convergence")
    ax2.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="coarse grids")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="save the picture to PATH (by default none is written)",
    )
    args = parser.parse_args()
    sizes = (15,) if args.smoke else (15, 31, 63)

    start = time.perf_counter()
    ts = np.array([0.0, 0.005, 0.02, 0.05, T_END])

    # 1. The stencil right-hand side equals hand-written slicing.
    x, dx = grid(sizes[-1])
    u = exact(x, 0.0) + 0.1 * np.random.default_rng(0).standard_normal(x.shape)
    rhs, rhs_hand = jax.jit(
        lambda u: (vector_field(0.0, u, dx), hand_vector_field(0.0, u, dx))
    )(u)
    rhs_err = float(jnp.max(jnp.abs(rhs - rhs_hand)) / jnp.max(jnp.abs(rhs_hand)))

    # 2. Diffrax solves the ODE system exactly (to its tolerance); the error
    #    against the PDE's solution is the spatial discretisation error.
    ode_errors, errors = [], []
    for n in sizes:
        x, dx = grid(n)
        us = np.asarray(solve(exact(x, 0.0), dx, ts))
        semi = exact_semi_discrete(x, ts[:, None], dx)
        ode_errors.append(float(np.max(np.abs(us - semi))))
        errors.append(float(np.max(np.abs(us[-1] - exact(x, T_END)))))
        if n == sizes[0]:
            plot_x, plot_us = x, us
    orders = [float(np.log2(a / b)) for a, b in zip(errors[:-1], errors[1:])]

    if args.out is not None:
        plot(plot_x, ts, plot_us, sizes, errors, args.out)
    elapsed = time.perf_counter() - start
    print(
        f"method of lines, grids {sizes}: |stencil - hand| / |rhs| = {rhs_err:.1e}, "
        f"max |ODE solve - exact ODE solution| {max(ode_errors):.1e}, "
        f"max |u - exact| at t = {T_END} "
        + " -> ".join(f"{e:.1e}" for e in errors)
        + (f", observed orders {[round(o, 2) for o in orders]}" if orders else "")
        + f" ({elapsed:.1f} s)"
    )
    if rhs_err > 1e-12:
        raise SystemExit(f"stencil vector field differs from slicing by {rhs_err}")
    if max(ode_errors) > 1e-8:
        raise SystemExit(f"the ODE solve is off by {max(ode_errors)}")
    if not all(1.8 < order < 2.2 for order in orders):
        raise SystemExit(f"expected second-order convergence, got orders {orders}")
    if not errors[-1] < 0.01:
        raise SystemExit(f"error against the exact solution too large: {errors}")


if __name__ == "__main__":
    main()
