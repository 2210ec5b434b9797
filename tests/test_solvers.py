"""Gradients through whole solvers: an Equinox Module holding a region stencil
and a learnable coefficient field, stepped by `es.iterate` (optionally
checkpointed), against the same solver written with hand-written slices."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from jaxtyping import Array, Float

import eqx_stencil as es


def interior(w):
    u, kappa = w
    lap = u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]
    return u[0, 0] + kappa[0, 0] * lap


HEAT = (
    es.kmap(kernel_size=(3, 3), padding="same", relative=True)
    .at[1:-1, 1:-1]
    .set(interior)
    .at[0, :]
    .set(lambda w: 0.0)  # Dirichlet rows
    .at[-1, :]
    .set(lambda w: 0.0)
    .at[:, 0]
    .set(lambda w: w[0][0, 1])  # Neumann columns (later regions win)
    .at[:, -1]
    .set(lambda w: w[0][0, -1])
)


class HeatSolver(eqx.Module):
    kappa: Float[Array, "n n"]
    stencil: es.Stencil = HEAT

    def __call__(
        self, u0: Float[Array, "n n"], num_steps: int, checkpoint_every=None
    ) -> Float[Array, "n n"]:
        return es.iterate(
            lambda u: self.stencil((u, self.kappa)),
            u0,
            num_steps,
            checkpoint_every=checkpoint_every,
        )


def hand_step(u, kappa):
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


def hand_solve(kappa, u0, num_steps):
    return jax.lax.fori_loop(0, num_steps, lambda _, u: hand_step(u, kappa), u0)


def problem(n, seed=0):
    rng = np.random.default_rng(seed)
    u0 = jnp.asarray(rng.uniform(size=(n, n)), jnp.float32)
    kappa = jnp.asarray(rng.uniform(0.05, 0.2, size=(n, n)), jnp.float32)
    target = jnp.asarray(rng.uniform(size=(n, n)), jnp.float32)
    return u0, kappa, target


@pytest.mark.parametrize("checkpoint_every", [None, 7])
def test_filter_grad_through_solver_matches_hand_written(checkpoint_every):
    u0, kappa, target = problem(20)
    steps = 60

    @eqx.filter_grad
    def grad(solver):
        u = solver(u0, steps, checkpoint_every)
        return jnp.mean((u - target) ** 2)

    def hand_loss(kappa):
        return jnp.mean((hand_solve(kappa, u0, steps) - target) ** 2)

    # Both gradients and both solutions in one program (one compile).
    @eqx.filter_jit
    def everything(kappa):
        return (
            grad(HeatSolver(kappa)).kappa,
            jax.grad(hand_loss)(kappa),
            HeatSolver(kappa)(u0, steps, checkpoint_every),
            hand_solve(kappa, u0, steps),
        )

    actual, expected, solution, hand_solution = everything(kappa)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(solution, hand_solution, rtol=1e-5, atol=1e-6)


def test_check_grads_through_solver():
    def solve(kappa, u0):
        return HeatSolver(kappa)(u0, 5, 2)

    with jax.enable_x64(True):
        u0, kappa, _ = problem(6, seed=1)
        u0, kappa = np.asarray(u0, np.float64), np.asarray(kappa, np.float64)
        # Jitted: the solver and its derivatives each compile once instead of
        # one program per primitive.
        check_grads(jax.jit(solve), (kappa, u0), order=1, modes=("fwd", "rev"))


def test_thousand_steps_gradient_runs_and_descends():
    """1,000 steps at 64²: one gradient step lowers the loss."""
    u0, kappa, target = problem(64, seed=2)

    def loss(solver):
        return jnp.mean((solver(u0, 1000, 32) - target) ** 2)

    # The gradient, the step and the stepped loss in one program.
    @eqx.filter_jit
    def descend(solver):
        value, grads = eqx.filter_value_and_grad(loss)(solver)
        scale = 1e-3 / jnp.max(jnp.abs(grads.kappa))
        stepped = eqx.apply_updates(solver, jax.tree.map(lambda g: -scale * g, grads))
        return value, grads.kappa, loss(stepped)

    value, grads, stepped_value = descend(HeatSolver(kappa))
    assert np.isfinite(value) and np.all(np.isfinite(grads))
    assert stepped_value < value


def gradient_temp_bytes(n, steps, checkpoint_every):
    u0, kappa, target = problem(n)

    def loss(kappa):
        return jnp.mean((HeatSolver(kappa)(u0, steps, checkpoint_every) - target) ** 2)

    stats = jax.jit(jax.grad(loss)).lower(kappa).compile().memory_analysis()
    if stats is None:
        pytest.fail("this backend reports no memory analysis")
    return stats.temp_size_in_bytes


def test_checkpointing_bounds_gradient_memory_at_512_squared():
    """1,000 steps of 512²: the plain loop keeps one residual array per step
    (~1 GiB); blocks of 32 under `jax.checkpoint` keep ~2 × 32 arrays."""
    field = 512 * 512 * 4
    plain = gradient_temp_bytes(512, 1000, None)
    checkpointed = gradient_temp_bytes(512, 1000, 32)
    assert plain >= 1000 * 510 * 510 * 4  # one interior-sized residual per step
    assert checkpointed < 2 * 2**30
    assert checkpointed < 100 * field


def test_iterate_blocks_and_remainder_equal_plain_loop():
    u0, kappa, _ = problem(10)
    everies = (1, 5, 23, 40)

    # The plain loop and every blocking in one program (one compile).
    @jax.jit
    def solve_all(kappa, u0):
        solver = HeatSolver(kappa)
        blocked = [solver(u0, 23, every) for every in everies]
        return solver(u0, 23), blocked, es.iterate(lambda u: u + 1, u0, 0)

    plain, blocked, unchanged = solve_all(kappa, u0)
    for out in blocked:
        np.testing.assert_allclose(out, plain, rtol=1e-6)
    np.testing.assert_array_equal(unchanged, u0)


def test_iterate_errors():
    with pytest.raises(ValueError, match="num_steps must be an int >= 0; got -1"):
        es.iterate(lambda u: u, jnp.ones(3), -1)
    with pytest.raises(ValueError, match="checkpoint_every must be an int >= 1; got 0"):
        es.iterate(lambda u: u, jnp.ones(3), 4, checkpoint_every=0)
