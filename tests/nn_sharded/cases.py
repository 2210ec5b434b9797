"""`eqx_stencil.nn` layers on 8 simulated CPU devices, one JSON line per case.

Run by `tests/test_nn_sharding.py` in a subprocess (the devices exist only if
`XLA_FLAGS` is set before JAX starts). Every case compares a sharded call with
the single-device call and reports the collectives of the compiled program.
"""

import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any


# Eight simulated devices, keeping the flags the test run set (its XLA
# optimisation level).
flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from case_runner import serve  # noqa: E402
from jax.sharding import (  # noqa: E402
    AxisType,
    NamedSharding,
    PartitionSpec as P,  # noqa: E402
)

import eqx_stencil as es  # noqa: E402
from eqx_stencil._hlo import collective_permute_bytes, count_collectives  # noqa: E402


KEY = jax.random.key(0)
SIZE = 16  # spatial extent of every dim
BATCH = 16  # two images per device


def _layers() -> dict[str, tuple[eqx.Module, tuple[int, ...]]]:
    """Every layer kind (and the geometry variants that matter), each with the
    shape of one input."""
    n = SIZE
    return {
        "conv1d": (es.nn.Conv1d(3, 4, 3, padding="same", key=KEY), (3, n)),
        "conv2d": (es.nn.Conv2d(3, 4, 3, padding="same", key=KEY), (3, n, n)),
        "conv2d_stride": (
            es.nn.Conv2d(3, 4, 3, stride=2, padding=1, key=KEY),
            (3, n, n),
        ),
        "conv2d_circular_groups": (
            es.nn.Conv2d(
                4,
                6,
                3,
                padding=2,
                dilation=2,
                groups=2,
                key=KEY,
                padding_mode="CIRCULAR",
            ),
            (4, n, n),
        ),
        "conv3d": (es.nn.Conv3d(2, 3, 3, padding=1, key=KEY), (2, 8, 8, 8)),
        "maxpool": (es.nn.MaxPool2d(3, stride=1, padding=1), (3, n, n)),
        "maxpool_aligned": (es.nn.MaxPool2d(2, stride=2), (3, n, n)),
        "avgpool": (es.nn.AvgPool2d(3, stride=2, padding=1), (3, n, n)),
        "avgpool1d": (es.nn.AvgPool1d(2, stride=2), (3, n)),
        "blur": (es.nn.AverageBlur(3, 5, padding_mode="REFLECT"), (3, n, n)),
        "finite_difference": (es.nn.FiniteDifference("laplacian_9"), (1, n, n)),
    }


LAYERS = _layers()
CASES: dict[str, Callable[[], dict]] = {}


def _rel_err(got: Any, want: Any) -> float:
    got, want = np.asarray(got), np.asarray(want)
    return float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30))


def _run(f: Callable, x: jax.Array, mesh: Any, spec: P) -> dict:
    """`f(x)` with `x` sharded by `spec` on `mesh`, against `f(x)` on one device."""
    want = jax.jit(f)(x)
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, spec))
        program = jax.jit(f).lower(xs).compile()
        got = program(xs)
    hlo = program.as_text()
    return {
        "err": max(
            _rel_err(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))
        ),
        "out_spec": str(jax.tree.leaves(got)[0].sharding.spec),
        "counts": count_collectives(hlo),
        "bytes": collective_permute_bytes(hlo),
    }


def _batch_case(name: str, axis_type: AxisType) -> Callable[[], dict]:
    layer, shape = LAYERS[name]

    def run() -> dict:
        mesh = jax.make_mesh((8,), ("b",), axis_types=(axis_type,))
        x = jax.random.normal(KEY, (BATCH, *shape))
        return _run(jax.vmap(layer), x, mesh, P("b"))

    return run


def _spatial_case(name: str) -> Callable[[], dict]:
    layer, shape = LAYERS[name]

    def run() -> dict:
        if len(shape) == 2:
            mesh, spec = jax.make_mesh((8,), ("x",)), P(None, "x")
        elif len(shape) == 3:
            mesh, spec = jax.make_mesh((4, 2), ("x", "y")), P(None, "x", "y")
        else:
            mesh, spec = (
                jax.make_mesh((2, 2, 2), ("x", "y", "z")),
                P(None, "x", "y", "z"),
            )
        x = jax.random.normal(KEY, shape)
        return _run(lambda a: layer(a), x, mesh, spec)

    return run


for _name in LAYERS:
    CASES[f"batch_explicit_{_name}"] = _batch_case(_name, AxisType.Explicit)
    CASES[f"batch_auto_{_name}"] = _batch_case(_name, AxisType.Auto)
    CASES[f"spatial_{_name}"] = _spatial_case(_name)


def _conv_grads(
    spec: P, mesh_shape: tuple[int, ...], axes: tuple[str, ...], batched: bool
) -> dict:
    layer, shape = LAYERS["conv2d"]
    params, static = eqx.partition(layer, eqx.is_array)

    def loss(params: Any, x: jax.Array) -> jax.Array:
        model = eqx.combine(params, static)
        y = jax.vmap(model)(x) if batched else model(x)
        return jnp.mean(jnp.sin(y))

    def grads(x: jax.Array) -> Any:
        return jax.grad(loss, argnums=(0, 1))(params, x)

    x = jax.random.normal(KEY, (BATCH, *shape) if batched else shape)
    return _run(grads, x, jax.make_mesh(mesh_shape, axes), spec)


CASES["grad_batch_conv2d"] = lambda: _conv_grads(P("b"), (8,), ("b",), True)
CASES["grad_spatial_conv2d"] = lambda: _conv_grads(
    P(None, "x", "y"), (4, 2), ("x", "y"), False
)


if __name__ == "__main__":
    serve(CASES)
