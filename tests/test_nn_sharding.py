"""`eqx_stencil.nn` layers on sharded inputs, on 8 simulated CPU devices.

The cases (`tests/nn_sharded/cases.py`) run once, in one subprocess (the
devices exist only if `XLA_FLAGS` is set before JAX starts); each test checks
the JSON line its case printed: the error against the single-device call, the
output's sharding, and the collectives of the compiled program.

- Batch sharding: `jax.vmap(layer)` on a batch split over 8 devices, on
  Explicit (`jax.set_mesh`) and Auto mesh axes: no communication at all.
- Spatial sharding: one input split over a 1-D, 2-D (4x2) or 3-D (2x2x2) mesh
  of Explicit axes: each layer's stencils exchange only their halos.
"""

from __future__ import annotations

import pytest
from case_runner import (
    NN_BATCHED_FAST,
    NN_LAYERS as LAYERS,
    SCRIPTS,
    breadth_param,
    result,
    results as case_results,
)


GATHERS = ("all-gather", "all-to-all", "reduce-scatter")
BREADTH = SCRIPTS["nn_sharded"].breadth  # cases only tests_thorough runs


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest) -> dict[str, dict]:
    return case_results("nn_sharded", request.config)


@pytest.mark.parametrize(
    "name",
    [
        breadth_param(f"batch_{axis_type}_{layer}", BREADTH)
        for axis_type in NN_BATCHED_FAST
        for layer in LAYERS
    ],
)
def test_batch_sharding(results: dict, name: str) -> None:
    entry = result(results, name)
    assert entry["err"] <= 1e-6
    assert entry["out_spec"].startswith("P('b'")
    assert set(entry["counts"].values()) == {0}, entry["counts"]


# Bytes each device sends, in float32 items: block (channels, 4, 8) on the 4x2
# mesh (16x16 input), (channels, 2) on 8 devices (length 16). Along x first,
# then along y with the rows just received (corners), unless the layer is
# separable.
HALO_ITEMS = {
    # input halo along the last dim: 2 x (3 x 2); no other dim.
    "conv1d": 2 * 3 * 1,
    # one stencil on the input (3 channels), window 3x3, pad (1, 1), as the
    # max-pool: 2 x (3 x 1 x 8) along x, 2 x (3 x 6 x 1) along y.
    "conv2d": 2 * 3 * 8 + 2 * 3 * 6,
    # window 3x3, pad (1, 1): 2 x (3 x 1 x 8) along x, 2 x (3 x 6 x 1) along y.
    "maxpool": 2 * 3 * 8 + 2 * 3 * 6,
    # stride 2, pad (1, 1): only from the lower neighbour, 3 x 1 x 8 and 3 x 5 x 1.
    "avgpool": 3 * 8 + 3 * 5,
    # windows within a shard: nothing.
    "maxpool_aligned": 0,
    "avgpool1d": 0,
    # separable 5x5: 2 x (3 x 2 x 8) along x, then 2 x (3 x 4 x 2) along y.
    "blur": 2 * 3 * 2 * 8 + 2 * 3 * 4 * 2,
    # 9-point: 2 x (1 x 1 x 8) + 2 x (1 x 6 x 1).
    "finite_difference": 2 * 8 + 2 * 6,
}


@pytest.mark.parametrize("layer", LAYERS)
def test_spatial_sharding(results: dict, layer: str) -> None:
    entry = result(results, f"spatial_{layer}")
    assert entry["err"] <= 1e-6
    sharded_dims = {"conv1d": 1, "avgpool1d": 1, "conv3d": 3}.get(layer, 2)
    mesh_axes = ("'x'", "'y'", "'z'")[:sharded_dims]
    assert entry["out_spec"] == f"P(None, {', '.join(mesh_axes)})"
    counts = entry["counts"]
    assert all(counts[name] == 0 for name in (*GATHERS, "all-reduce")), counts
    assert counts["collective-permute"] <= 2 * sharded_dims
    if layer in HALO_ITEMS:
        assert entry["bytes"] == 4 * HALO_ITEMS[layer]
        assert (counts["collective-permute"] == 0) == (HALO_ITEMS[layer] == 0)


@pytest.mark.parametrize("sharding", ["batch", "spatial"])
def test_conv_gradient(results: dict, sharding: str) -> None:
    """Gradients w.r.t. the weights and the input: the weight gradient sums
    over shards (all-reduce); nothing is gathered."""
    entry = result(results, f"grad_{sharding}_conv2d")
    assert entry["err"] <= 1e-5
    counts = entry["counts"]
    assert all(counts[name] == 0 for name in GATHERS), counts
    assert counts["collective-permute"] == (0 if sharding == "batch" else 8)
