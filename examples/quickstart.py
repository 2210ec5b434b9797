"""Quick start: a Laplacian stencil, a heat-equation solver and its gradient.

Run: `pip install -e .`, then `python examples/quickstart.py`
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp

import eqx_stencil as es


@es.kmap(kernel_size=(3, 3), padding="same", relative=True)
def laplacian(u):
    return u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]


@es.kmap(kernel_size=(3, 3), padding="same", boundary="wrap")
def blur(window, weights):
    return jnp.sum(window * weights)


def hand_laplacian(u):
    p = jnp.pad(u, 1)
    return p[2:, 1:-1] + p[:-2, 1:-1] + p[1:-1, 2:] + p[1:-1, :-2] - 4 * p[1:-1, 1:-1]


def solve(alpha, u0, steps=200):
    step = lambda _, u: u + alpha * laplacian(u)  # noqa: E731
    return jax.lax.fori_loop(0, steps, step, u0)


def median_ms(functions, *args, rounds=50):
    """Median milliseconds of each function, timed in interleaved rounds so that
    the machine's load at any moment weighs on all of them alike."""
    for f in functions:
        jax.block_until_ready(f(*args))  # compile first
    times = [[] for _ in functions]
    for _ in range(rounds):
        for f, seen in zip(functions, times):
            start = time.perf_counter()
            jax.block_until_ready(f(*args))
            seen.append(time.perf_counter() - start)
    return [1e3 * sorted(seen)[rounds // 2] for seen in times]


def main():
    print(laplacian)
    print("laplacian(ones(4, 4)) =\n", laplacian(jnp.ones((4, 4))))

    u = jax.random.normal(jax.random.PRNGKey(0), (2048, 2048))
    ours, hand = jax.jit(laplacian), jax.jit(hand_laplacian)
    assert jnp.allclose(ours(u), hand(u))
    ours_ms, hand_ms = median_ms([ours, hand], u)
    print(
        f"2048² Laplacian, median of 50 interleaved runs: eqx_stencil {ours_ms:.2f} "
        f"ms, hand-written pad+slice {hand_ms:.2f} ms (nox -s bench measures more)"
    )

    weights = jnp.full((3, 3), 1 / 9)
    print(
        "periodic box blur of a ramp:",
        blur(jnp.arange(5.0)[None].repeat(3, 0), weights)[0],
    )

    u0 = jnp.zeros((64, 64)).at[24:40, 24:40].set(1.0)
    target = solve(0.2, u0)
    loss = lambda alpha: jnp.mean((solve(alpha, u0) - target) ** 2)  # noqa: E731
    grad = eqx.filter_jit(jax.grad(loss))
    print(f"d loss / d alpha at alpha=0.1 through 200 steps: {grad(0.1):.5f}")


if __name__ == "__main__":
    main()
