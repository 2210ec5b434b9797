"""One process of the 2-process heat test (`tests/test_distributed.py`).

Run as `python heat_worker.py PROCESS_ID PORT OUT.npz`, with
`XLA_FLAGS=--xla_force_host_platform_device_count=2` so that each process has
two CPU devices. The two processes form one 2x2 mesh through
`jax.distributed` (gloo collectives), run the sharded heat solver of
`tests/distributed/heat.py` and its gradient, and write the results gathered
from every process to `OUT.npz` for the test to check.
"""

import sys

import jax


jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402
from heat import GRID, KAPPA, hand_written_step, initial_field, loss, solve  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from eqx_stencil._hlo import count_collectives  # noqa: E402


def main() -> None:
    process_id, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=60,
    )
    assert jax.process_count() == 2 and jax.device_count() == 4
    mesh = jax.make_mesh((2, 2), ("x", "y"))
    sharding = NamedSharding(mesh, PartitionSpec("x", "y"))
    u0 = initial_field()
    u = jax.make_array_from_callback(GRID, sharding, lambda index: u0[index])
    gradient = jax.jit(jax.value_and_grad(loss, argnums=1))
    with jax.set_mesh(mesh):
        hand = jax.jit(hand_written_step)(u)
        final = jax.jit(solve)(u, KAPPA)
        value, grad = gradient(u, KAPPA)
        programs = {
            "solve": jax.jit(solve).lower(u, KAPPA).compile().as_text(),
            "gradient": gradient.lower(u, KAPPA).compile().as_text(),
        }
    gathered = {
        "hand": multihost_utils.process_allgather(hand, tiled=True),
        "final": multihost_utils.process_allgather(final, tiled=True),
        # Replicated scalars: every process holds the value.
        "value": np.asarray(value.addressable_data(0)),
        "grad": np.asarray(grad.addressable_data(0)),
        "sharding": np.array(str(final.sharding.spec)),
        **{
            f"{name} {collective}": np.array(count)
            for name, text in programs.items()
            for collective, count in count_collectives(text).items()
        },
    }
    if process_id == 0:
        np.savez(out, **gathered)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
