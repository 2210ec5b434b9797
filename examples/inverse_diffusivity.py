"""Recover a spatially varying diffusivity by gradient descent through a solver.

A 1-D rod with insulated ends obeys du/dt = d/dx(kappa(x) du/dx). We observe
u(x, t), with a little noise, at a few times for a few initial temperatures, and
recover kappa(x) by differentiating through the whole explicit solver with
`eqx.filter_value_and_grad` and stepping with `optax.adam`.

The flux form needs kappa at every position next to u, so the step is a
multi-field stencil: called on the fields `(u, kappa)`, its function receives
the windows `(u, kappa)` and returns the new u. The model is an `eqx.Module`
holding the unknown field; a second stencil is the smoothness penalty that keeps
the measurement noise out of the recovered kappa.

The script checks that the loss drops by more than 10x and that the recovered
kappa is at least twice as close to the truth as the initial guess.

Run: `pip install -e ".[examples]"`, then
`python examples/inverse_diffusivity.py [--smoke] [--out PATH]`
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
import optax


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eqx_stencil as es  # noqa: E402


R = 0.4  # dt / dx**2; stable while R * max(kappa) <= 0.5
KAPPA_MAX = 1.0  # kappa = KAPPA_MAX * sigmoid(theta) keeps every iterate stable
NOISE = 1e-3  # standard deviation of the measurement noise
SMOOTHING = 1e-6  # weight of the roughness penalty


@es.kmap(kernel_size=3, padding="same", boundary="edge", relative=True)
def heat_step(w):
    """One explicit step of u_t = (kappa u_x)_x; edge padding = insulated ends."""
    u, kappa = w
    k_right = 0.5 * (kappa[0] + kappa[1])  # kappa on the face i + 1/2
    k_left = 0.5 * (kappa[0] + kappa[-1])  # kappa on the face i - 1/2
    return u[0] + R * (k_right * (u[1] - u[0]) - k_left * (u[0] - u[-1]))


@es.kmap(kernel_size=2, relative=True)
def roughness(k):
    """Squared jump between neighbours (kernel 2, no padding: n - 1 outputs)."""
    return (k[1] - k[0]) ** 2


class Rod(eqx.Module):
    """The forward model: a rod whose diffusivity is KAPPA_MAX * sigmoid(theta)."""

    theta: jax.Array

    @property
    def kappa(self) -> jax.Array:
        return KAPPA_MAX * jax.nn.sigmoid(self.theta)

    def __call__(self, u0: jax.Array, steps_per_obs: int, n_obs: int) -> jax.Array:
        """u at `n_obs` observation times, shape (n_obs, n)."""
        kappa = self.kappa

        def observe(u, _):
            u = es.iterate(lambda v: heat_step((v, kappa)), u, steps_per_obs)
            return u, u

        return jax.lax.scan(observe, u0, length=n_obs)[1]


def observe_all(rod: Rod, u0s: jax.Array, steps_per_obs: int, n_obs: int):
    """The observations for every initial condition, shape (n_init, n_obs, n)."""
    return jax.vmap(lambda u0: rod(u0, steps_per_obs, n_obs))(u0s)


def true_kappa(n: int) -> np.ndarray:
    x = np.linspace(0, 1, n)
    kappa = 0.25 + 0.5 * np.exp(-(((x - 0.3) / 0.1) ** 2)) + 0.2 * (x > 0.65)
    return kappa.astype(np.float32)


def loss(rod: Rod, u0s: jax.Array, data: jax.Array, steps_per_obs: int) -> jax.Array:
    pred = observe_all(rod, u0s, steps_per_obs, data.shape[1])
    return jnp.mean((pred - data) ** 2) + SMOOTHING * jnp.sum(roughness(rod.kappa))


def fit(
    rod: Rod, u0s: jax.Array, data: jax.Array, steps_per_obs: int, iterations: int
) -> tuple[Rod, list[float]]:
    optim = optax.adam(0.05)
    state = optim.init(eqx.filter(rod, eqx.is_array))

    @eqx.filter_jit
    def update(rod, state):
        value, grads = eqx.filter_value_and_grad(loss)(rod, u0s, data, steps_per_obs)
        updates, state = optim.update(grads, state)
        return eqx.apply_updates(rod, updates), state, value

    history = []
    for _ in range(iterations):
        rod, state, value = update(rod, state)
        history.append(float(value))
    return rod, history


def plot(
    kappa_true: np.ndarray,
    kappa_init: np.ndarray,
    kappa_fit: np.ndarray,
    history: list[float],
    out: Path,
) -> None:
    x = np.linspace(0, 1, len(kappa_true))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    ax1.plot(x, kappa_true, "k", lw=2, label="true")
    ax1.plot(x, kappa_init, "C1--", label="initial guess")
    ax1.plot(x, kappa_fit, "C0", label="recovered")
    ax1.set_xlabel("x")
    ax1.set_ylabel("kappa(x)")
    ax1.legend()
    ax1.set_title("diffusivity")
    ax2.semilogy(history, label="misfit + penalty")
    ax2.axhline(NOISE**2, color="gray", ls=":", label="noise variance")
    ax2.legend()
    ax2.set_xlabel("adam iteration")
    ax2.set_ylabel("loss")
    ax2.set_title("loss through the solver")
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
        n, n_init, steps_per_obs, n_obs, iterations = 16, 2, 5, 4, 60
    else:
        n, n_init, steps_per_obs, n_obs, iterations = 64, 4, 20, 10, 400

    start = time.perf_counter()
    u0s = jax.random.uniform(jax.random.PRNGKey(0), (n_init, n))
    kappa_true = true_kappa(n)
    # theta = logit(kappa / KAPPA_MAX), the inverse of kappa_of
    truth = Rod(jnp.asarray(np.log(kappa_true / (KAPPA_MAX - kappa_true))))
    data = eqx.filter_jit(observe_all)(truth, u0s, steps_per_obs, n_obs)
    data = data + NOISE * jax.random.normal(jax.random.PRNGKey(1), data.shape)

    guess = Rod(jnp.zeros(n))  # kappa = 0.5 everywhere
    rod, history = fit(guess, u0s, data, steps_per_obs, iterations)
    kappa_init, kappa_fit = np.asarray(guess.kappa), np.asarray(rod.kappa)
    err_init = float(np.max(np.abs(kappa_init - kappa_true)))
    err_fit = float(np.max(np.abs(kappa_fit - kappa_true)))

    if args.out is not None:
        plot(kappa_true, kappa_init, kappa_fit, history, args.out)
    elapsed = time.perf_counter() - start
    print(
        f"inverse diffusivity n={n}, {iterations} adam steps through "
        f"{steps_per_obs * n_obs} solver steps: loss {history[0]:.2e} -> "
        f"{history[-1]:.2e} ({history[0] / history[-1]:.0f}x), max |kappa error| "
        f"{err_init:.3f} -> {err_fit:.3f} ({elapsed:.1f} s)"
    )
    if not history[-1] < history[0] / 10:
        raise SystemExit("the loss did not drop by 10x")
    if not err_fit < 0.5 * err_init:
        raise SystemExit("the recovered kappa is not much closer to the truth")


if __name__ == "__main__":
    main()
