"""Stencils on sharded arrays: finding the mesh and running `jax.shard_map`."""

from __future__ import annotations

from typing import Any

from jax.sharding import NamedSharding


def check_sharding(sharding: Any) -> NamedSharding | None:
    """Validate the `sharding=` argument of a stencil."""
    if sharding is not None and not isinstance(sharding, NamedSharding):
        raise TypeError(
            "sharding must be a jax.sharding.NamedSharding (the mesh and "
            f"PartitionSpec to run on) or None; got {sharding!r} of type "
            f"{type(sharding).__name__}."
        )
    return sharding
