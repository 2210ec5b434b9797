"""The sharded heat solver across 2 processes (`jax.distributed`, gloo).

Two worker processes (`tests/distributed/heat_worker.py`) on this machine,
2 CPU devices each, form one 2x2 mesh; they run 10 steps of a region stencil
with Dirichlet rows and its gradient w.r.t. the diffusivity. This process
checks what they gathered against the same solver on one device.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest


HERE = pathlib.Path(__file__).parent / "distributed"
TIMEOUT = 120  # seconds; a hang fails the test instead of blocking CI


def _load_heat():
    spec = importlib.util.spec_from_file_location("distributed_heat", HERE / "heat.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


heat = _load_heat()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gathered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("distributed") / "results.npz"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    flags = os.environ.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2"
    port = str(_free_port())
    workers = [
        subprocess.Popen(
            [sys.executable, str(HERE / "heat_worker.py"), str(i), port, str(out)],
            env=env,
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for worker in workers:
            logs.append(worker.communicate(timeout=TIMEOUT)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    codes = [worker.returncode for worker in workers]
    assert codes == [0, 0], f"workers exited with {codes}:\n" + "\n".join(
        log[-3000:] for log in logs
    )
    with np.load(out) as results:
        return dict(results)


def test_hand_written_exchange(gathered: dict[str, np.ndarray]) -> None:
    u = heat.initial_field()
    p = np.pad(u, 1)
    lap = p[2:, 1:-1] + p[:-2, 1:-1] + p[1:-1, 2:] + p[1:-1, :-2] - 4 * u
    np.testing.assert_allclose(gathered["hand"], u + heat.KAPPA * lap, rtol=1e-6)


def test_solver_equals_one_process(gathered: dict[str, np.ndarray]) -> None:
    u = heat.initial_field()
    expected = jax.jit(heat.solve)(u, heat.KAPPA)
    assert gathered["final"].shape == heat.GRID
    np.testing.assert_allclose(gathered["final"], expected, rtol=1e-4, atol=1e-6)
    assert str(gathered["sharding"]) == "P('x', 'y')"


def test_gradient_equals_one_process(gathered: dict[str, np.ndarray]) -> None:
    u = heat.initial_field()
    value, grad = jax.value_and_grad(heat.loss, argnums=1)(u, heat.KAPPA)
    np.testing.assert_allclose(gathered["value"], value, rtol=1e-4)
    np.testing.assert_allclose(gathered["grad"], grad, rtol=1e-4)


def test_only_halo_exchanges(gathered: dict[str, np.ndarray]) -> None:
    """A step sends 4 halos (2 sharded axes, 2 directions); its transpose in
    the gradient 4 more. The gradient's all-reduces sum the loss and dkappa
    over the shards; nothing is gathered."""
    counts = {key: int(value) for key, value in gathered.items() if " " in key}
    assert counts["solve collective-permute"] == 4
    assert counts["gradient collective-permute"] == 8
    for program in ("solve", "gradient"):
        for collective in ("all-gather", "all-to-all", "reduce-scatter"):
            assert counts[f"{program} {collective}"] == 0, (program, collective)
    assert counts["solve all-reduce"] == 0
