"""Sharded stencils on 8 simulated CPU devices.

The devices exist only if `XLA_FLAGS` is set before JAX starts, so the cases
(`tests/sharded/cases.py`) run once, in one subprocess, and each test asserts
on the JSON line its case printed: the error against the single-device call,
the collectives in the compiled program, or the error the case must raise.
"""

from __future__ import annotations

import pytest
from case_runner import MODES, SCRIPTS, breadth_param, result, results as case_results


NO_GATHER = {"all-gather": 0, "all-to-all": 0, "all-reduce": 0}
BREADTH = SCRIPTS["sharded"].breadth  # cases only tests_thorough runs


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest) -> dict[str, dict]:
    return case_results("sharded", request.config)


def others(entry: dict) -> dict[str, int]:
    return {k: v for k, v in entry["counts"].items() if k != "collective-permute"}


@pytest.mark.parametrize(
    "name",
    [
        breadth_param(f"lap{points}_{mode}", BREADTH)
        for points in (5, 9)
        for mode in MODES
    ],
)
def test_laplacian_4x2(results: dict, name: str) -> None:
    entry = result(results, name)
    assert entry["err"] <= 1e-6
    assert entry["out_spec"] == ["P('x', 'y')"]
    assert entry["counts"]["collective-permute"] <= 4
    assert others(entry) == NO_GATHER
    # exactly the halo: a row of 8 and a column of 8 + 2 (corners), each way
    assert entry["bytes"] == 4 * (2 * 8 + 2 * 10)


def test_7_point_2x2x2(results: dict) -> None:
    entry = result(results, "lap7_3d")
    assert entry["err"] <= 1e-6
    assert entry["counts"]["collective-permute"] <= 6
    assert others(entry) == NO_GATHER
    assert entry["bytes"] == 4 * 2 * (4 * 4 + 6 * 4 + 6 * 6)


@pytest.mark.parametrize("name", ["pooling", "avg_pool_3"])
def test_pooling_needs_no_collectives(results: dict, name: str) -> None:
    entry = result(results, name)
    assert entry["err"] <= 1e-6
    assert entry["counts"] == {"collective-permute": 0, **NO_GATHER}


@pytest.mark.parametrize(
    "name",
    [
        "wide_halo_one_dim",
        "strided",
        "dilated",
        "cropping",
        "patches",
        "regions_slices",
        "regions_mask",
        "data_region",
        "region_one_shard",
        "multi_field",
        "extra_args",
        "smap_offset",
        "kscan_unswept",
        "sscan_unswept",
        "replicated_dim",
        "two_mesh_axes_one_dim",
        "vmapped",
        "one_device_mesh",
    ],
)
def test_equals_single_device(results: dict, name: str) -> None:
    entry = result(results, name)
    assert entry["err"] <= 1e-6
    assert others(entry) == NO_GATHER
    assert entry["counts"]["collective-permute"] <= 8


def test_unswept_kscan_needs_no_exchange(results: dict) -> None:
    for name in ("kscan_unswept", "sscan_unswept"):
        assert result(results, name)["counts"]["collective-permute"] == 0


def test_region_runs_only_on_its_shard(results: dict) -> None:
    # the region's cosine is compiled into one shard's program only
    assert result(results, "region_one_shard")["cosines"] == 1


def test_output_keeps_sharding(results: dict) -> None:
    assert result(results, "patches")["out_spec"] == ["P('x', 'y', None, None)"]
    assert result(results, "replicated_dim")["out_spec"] == ["P('x', None)"]
    assert result(results, "kscan_unswept")["out_spec"] == ["P(None, 'y')"]
    assert result(results, "explicit_resharded")["out_spec"] == ["P('x', None)"]


def test_auto_mesh_with_sharding_keyword(results: dict) -> None:
    entry = result(results, "auto_mesh")
    assert entry["err"] <= 1e-6
    assert entry["out_sharding"] == "P('x', 'y')"
    assert entry["counts"] == {"collective-permute": 4, **NO_GATHER}
    # without sharding= XLA's partitioner gathers: the keyword is what saves it
    assert entry["partitioner_counts"]["collective-permute"] > 4


def test_sharding_keyword_reshards_explicit_input(results: dict) -> None:
    entry = result(results, "explicit_resharded")
    assert entry["err"] <= 1e-6
    # the one gather is the requested reshard (P('x', 'y') -> P('x', None))
    assert entry["counts"] == {
        "collective-permute": 2,
        "all-gather": 1,
        "all-to-all": 0,
        "all-reduce": 0,
    }


def test_one_device_mesh_has_no_collectives(results: dict) -> None:
    entry = result(results, "one_device_mesh")
    assert entry["counts"] == {"collective-permute": 0, **NO_GATHER}


@pytest.mark.parametrize("mode", ["wrap", "constant"])
def test_interior_does_not_wait_for_the_halo(results: dict, mode: str) -> None:
    entry = result(results, f"interior_independent_{mode}")
    assert entry["independent"] >= 1  # the interior fusion reads no halo
    assert entry["dependent"] >= 1  # the strips do (the check can see it)
    assert entry["counts"]["collective-permute"] == 4


def test_solver_gradients(results: dict) -> None:
    entry = result(results, "solver_gradients")
    assert entry["err"] <= 1e-4
    assert entry["counts"]["all-gather"] == 0
    assert entry["counts"]["all-to-all"] == 0
    assert entry["grad_spec"] == ["P('x', 'y')"]


@pytest.mark.parametrize(
    "name, error, words",
    [
        ("kscan_swept_axis", "ValueError", ["dim 0", "sequentially", "('x',)"]),
        ("kscan_neighbour_updates", "ValueError", ["dim 1", "('y',)", "es.iterate"]),
        ("halo_too_wide", "ValueError", ["shards of 8", "reaches 9", "('y',)"]),
        ("uneven_output", "ValueError", ["(32, 16)", "(30, 14)", "'x': 4"]),
        ("mixed_fields", "ValueError", ["P('x', 'y')", "P('x', None)"]),
        ("bad_sharding_type", "TypeError", ["sharding", "NamedSharding"]),
    ],
)
def test_bad_input(results: dict, name: str, error: str, words: list[str]) -> None:
    entry = results[name]
    assert entry.get("raised") == error, entry
    for word in words:
        assert word in entry["message"]


@pytest.mark.parametrize(
    "name",
    [
        breadth_param(f"deep_halo_{mode}", BREADTH)
        for mode in ("wrap", "constant", "reflect")
    ],
)
def test_deep_halos(results: dict, name: str) -> None:
    # 12 steps, one exchange every 4: the loop body holds the only 4 messages
    entry = result(results, name)
    assert entry["err"] <= 1e-6
    assert entry["counts"] == {"collective-permute": 4, **NO_GATHER}
    assert entry["out_spec"] == ["P('x', 'y')"]


def test_deep_halo_gradient(results: dict) -> None:
    entry = result(results, "deep_halo_gradient")
    assert entry["err"] <= 1e-4
    assert entry["counts"]["all-gather"] == 0
    assert entry["counts"]["all-to-all"] == 0
    # one exchange per 5 steps forward, its transpose backward
    assert entry["counts"]["collective-permute"] <= 8


@pytest.mark.parametrize(
    "name, words",
    [
        ("deep_halo_too_deep", ["halo_every=9", "halo of 9", "8 rows", "('x',)"]),
        ("deep_halo_unsharded", ["halo_every", "Explicit mesh axes"]),
    ],
)
def test_deep_halo_bad_input(results: dict, name: str, words: list[str]) -> None:
    entry = results[name]
    assert entry.get("raised") == "ValueError", entry
    for word in words:
        assert word in entry["message"]


def test_shared_interior_computed_outside_the_shard_programs(results: dict) -> None:
    entry = result(results, "interior_independent_regions")
    assert entry["err"] <= 1e-6
    assert entry["counts"] == {"collective-permute": 4, **NO_GATHER}
    assert entry["conditionals"] == 1  # the edge shards' programs differ
    assert entry["independent"] >= 1  # but the interior is outside, halo-free


def test_fields_share_messages(results: dict) -> None:
    # two fields: still one message per sharded dim and direction, twice the halo
    entry = result(results, "multi_field")
    assert entry["counts"] == {"collective-permute": 4, **NO_GATHER}
    assert entry["bytes"] == 2 * 4 * (2 * 8 + 2 * 10)
