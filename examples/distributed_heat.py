"""2-D heat equation on a mesh of devices: each shard exchanges only its halo.

The step of `examples/heat.py` (five-point update, Dirichlet rows on top and
bottom, Neumann columns left and right: one region stencil) runs unchanged on
a field split over a 4×2 mesh: the field is put on the mesh with a
`NamedSharding` and the stencil sees it in the array's type. The script checks
the sharded solve against the single-device one, reads the compiled program
to check that a step sends only its halo (4 collective-permutes, one per
sharded axis and direction, and no gather), and runs a periodic variant with
deep halos (`es.iterate(..., halo_every=8)`: one exchange every 8 steps).

Run as a script it sets `XLA_FLAGS` for 8 simulated CPU devices before JAX
starts (they share this machine's cores: they show what is sent, not a
speed-up). On real accelerators the mesh uses the devices there are.

Run: `pip install -e ".[examples]"`, then
`python examples/distributed_heat.py [--smoke] [--out PATH]`
(`--out PATH`: save the picture there).
"""

import os


if __name__ == "__main__":  # before JAX starts: 8 simulated CPU devices
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
from heat import ALPHA, BOTTOM, TOP, initial_condition, make_heat_step  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eqx_stencil as es  # noqa: E402


HALO_EVERY = 8


def mesh_shape() -> tuple[int, int]:
    """4×2 on 8 devices; as square as the device count allows otherwise."""
    n = jax.device_count()
    rows = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return n // rows, rows


def periodic_step(alpha: float) -> es.Stencil:
    """One explicit heat step on a periodic domain (no regions, so deep halos
    apply)."""

    def update(u):
        return u[0, 0] + alpha * (u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0])

    return es.kmap(
        update, kernel_size=(3, 3), padding="same", relative=True, boundary="wrap"
    )


def collectives(program: str) -> dict[str, int]:
    """How many of each collective a compiled program's HLO text runs."""
    names = ("collective-permute", "all-gather", "all-to-all")
    return {name: program.count(f" {name}(") for name in names}


def plot(u: np.ndarray, shape: tuple[int, int], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.3), layout="constrained")
    im = ax.imshow(u, cmap="inferno", vmin=0, vmax=1)
    n, m = u.shape
    for i in range(1, shape[0]):
        ax.axhline(i * n / shape[0] - 0.5, color="white", lw=0.8, ls="--")
    for j in range(1, shape[1]):
        ax.axvline(j * m / shape[1] - 0.5, color="white", lw=0.8, ls="--")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, shrink=0.8, label="u")
    ax.set_title(f"heat on a {shape[0]}×{shape[1]} mesh (dashed: shard blocks)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small grid, few steps")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="save the picture to PATH (by default none is written)",
    )
    args = parser.parse_args()
    n, steps = (32, 64) if args.smoke else (256, 4000)

    start = time.perf_counter()
    shape = mesh_shape()
    mesh = jax.make_mesh(shape, ("x", "y"))  # Explicit axes
    step = make_heat_step(ALPHA, TOP, BOTTOM)
    u0 = jnp.asarray(initial_condition(n))

    def solve(u: jax.Array) -> jax.Array:
        return es.iterate(step, u, steps)

    single = jax.jit(solve)(u0)
    with jax.set_mesh(mesh):
        u = jax.device_put(u0, P("x", "y"))
        sharded = jax.jit(solve)(u)
        one_step = jax.jit(step).lower(u).compile().as_text()
    error = float(jnp.max(jnp.abs(np.asarray(sharded) - np.asarray(single))))
    counts = collectives(one_step)

    # Deep halos on the periodic variant: one exchange every HALO_EVERY steps.
    wrap = periodic_step(ALPHA)
    deep = jax.jit(lambda u: es.iterate(wrap, u, steps, halo_every=HALO_EVERY))
    with jax.set_mesh(mesh):
        u = jax.device_put(u0, P("x", "y"))
        deep_out = deep(u)
        deep_counts = collectives(deep.lower(u).compile().as_text())
    deep_error = float(
        jnp.max(jnp.abs(np.asarray(deep_out) - np.asarray(es.iterate(wrap, u0, steps))))
    )

    if args.out is not None:
        plot(np.asarray(sharded), shape, args.out)
    elapsed = time.perf_counter() - start
    print(
        f"heat {n}x{n} on a {shape[0]}x{shape[1]} mesh, {steps} steps: "
        f"|sharded - single device| = {error:.1e}; per step "
        f"{counts['collective-permute']} collective-permutes, "
        f"{counts['all-gather']} all-gathers; deep halos: "
        f"{deep_counts['collective-permute']} collective-permutes per "
        f"{HALO_EVERY} steps, error {deep_error:.1e} ({elapsed:.1f} s)"
    )
    if error > 1e-5 or deep_error > 1e-5:
        raise SystemExit(f"sharded result differs: {error}, deep halos {deep_error}")
    sharded_axes = sum(size > 1 for size in shape)
    gathers = counts["all-gather"] + counts["all-to-all"] + deep_counts["all-gather"]
    if gathers or counts["collective-permute"] != 2 * sharded_axes:
        raise SystemExit(f"a step sends more than its halo: {counts}, {deep_counts}")
    if deep_counts["collective-permute"] != 2 * sharded_axes:
        raise SystemExit(f"deep halos: {deep_counts} per {HALO_EVERY} steps")


if __name__ == "__main__":
    main()
