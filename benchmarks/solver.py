"""The gradient through a 1,000-step solver with a learnable coefficient field.

An Equinox Module holds a heat stencil with boundary regions (applied to the
two fields `(u, kappa)`) and the diffusivity field `kappa`; the loss is the
mean squared misfit after 1,000 steps of 512², differentiated with respect to
`kappa` by `eqx.filter_grad`. Steps run through `es.iterate` in blocks of 32
under `jax.checkpoint`, for eqx_stencil and the hand-written slices alike, so
the case compares the stencil, not the checkpointing. XLA's temporary memory
of the compiled gradients is reported too, with the loop without checkpoints for
scale (about one 510² residual per step).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

import eqx_stencil as es

from ._report import Bar, Table
from ._runtime import ES, HAND, RuntimeCase, Variant, run_case
from ._timing import Budget
from .heat import memory_table, temp_bytes
from .laplacian import field


N = 512
STEPS = 1000
EVERY = 32
NO_CHECKPOINT = "eqx_stencil, no checkpoint"


def interior(w: tuple[Array, Array]) -> Array:
    """Explicit Euler with the 5-point Laplacian scaled by the local kappa."""
    u, kappa = w
    lap = u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]
    return u[0, 0] + kappa[0, 0] * lap


def zero(w: tuple[Array, Array]) -> float:
    """Dirichlet rows."""
    return 0.0


HEAT = (
    es.kmap(kernel_size=(3, 3), padding="same", relative=True)
    .at[1:-1, 1:-1]
    .set(interior)
    .at[0, :]
    .set(zero)
    .at[-1, :]
    .set(zero)
    .at[:, 0]
    .set(lambda w: w[0][0, 1])
    .at[:, -1]
    .set(lambda w: w[0][0, -1])
)


class HeatSolver(eqx.Module):
    """The solver: a region stencil and a learnable diffusivity field."""

    kappa: Float[Array, "n n"]
    stencil: es.Stencil = HEAT

    def __call__(self, u0: Array, every: int | None) -> Array:
        step = lambda u: self.stencil((u, self.kappa))  # noqa: E731
        return es.iterate(step, u0, STEPS, checkpoint_every=every)


def hand_step(u: Array, kappa: Array) -> Array:
    """The same step with slices and `.at[].set`."""
    c = u[1:-1, 1:-1]
    lap = u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4 * c
    return (
        jnp.zeros_like(u)
        .at[1:-1, 1:-1]
        .set(c + kappa[1:-1, 1:-1] * lap)
        .at[0, :]
        .set(0.0)
        .at[-1, :]
        .set(0.0)
        .at[:, 0]
        .set(u[:, 1])
        .at[:, -1]
        .set(u[:, -2])
    )


Grad = Callable[[Array, Array, Array], Array]


def es_grad(every: int | None) -> Grad:
    """`eqx.filter_grad` of the misfit with respect to the Module's kappa."""

    def grad(kappa: Array, u0: Array, target: Array) -> Array:
        def loss(solver: HeatSolver) -> Array:
            return jnp.mean((solver(u0, every) - target) ** 2)

        return eqx.filter_grad(loss)(HeatSolver(kappa)).kappa

    return grad


def hand_grad(kappa: Array, u0: Array, target: Array) -> Array:
    """The hand-written solver's gradient, checkpointed the same way."""

    def loss(kappa: Array) -> Array:
        step = lambda u: hand_step(u, kappa)  # noqa: E731
        u = es.iterate(step, u0, STEPS, checkpoint_every=EVERY)
        return jnp.mean((u - target) ** 2)

    return jax.grad(loss)(kappa)


def arguments(n: int = N) -> tuple[Array, Array, Array]:
    """A diffusivity in [0.05, 0.2], an initial field and a target."""
    kappa = 0.05 + 0.15 * jnp.abs(jnp.tanh(field(n)))
    return kappa, field(n), 0.5 * field(n)


def case() -> RuntimeCase:
    """Time of the checkpointed gradients."""
    return RuntimeCase(
        f"solver grad {N}², {STEPS} steps, checkpoint every {EVERY}",
        arguments,
        [Variant(ES, es_grad(EVERY), tolerance=1e-4), Variant(HAND, hand_grad)],
        bars=(Bar(ES, HAND, limit=1.5),),
    )


def memory() -> Table:
    """XLA temp bytes of the compiled gradients (not run)."""
    args = arguments()
    temps: dict[str, int | None | str] = {
        ES: temp_bytes(es_grad(EVERY), *args),
        HAND: temp_bytes(hand_grad, *args),
        NO_CHECKPOINT: temp_bytes(es_grad(None), *args),
    }
    return memory_table(f"solver grad {N}², {STEPS} steps", temps)


def run(budget: Budget) -> tuple[Table, Table]:
    """The gradient's timing table and its XLA temp memory table."""
    return run_case(case(), budget), memory()
