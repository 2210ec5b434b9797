"""Sharded stencils: what one step sends, and the cost of the sharded path.

1. Collectives per step, read from the compiled program (`eqx_stencil._hlo`),
   on one Auto mesh of 8 devices (4×2; 2×2×2 for the 3-D case): eqx_stencil
   (`sharding=`), hand-written pad + slices and `jnp.roll`, whose sharding
   XLA's partitioner works out. eqx_stencil must send exactly its halo (one
   collective-permute per sharded axis and direction, corners carried by
   exchanging the axes in turn) and gather nothing.
2. The sharded path on a 1-device mesh against the plain call (its overhead).

The 8 devices are simulated CPU devices: `XLA_FLAGS` must hold `ENV` before
JAX starts, so `python -m benchmarks` runs this case in its own process with
it. They share the machine's cores, so they show what is sent, not a speed-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from jaxtyping import Array

import eqx_stencil as es
from eqx_stencil._hlo import collective_permute_bytes, count_collectives

from ._report import Bar, Row, Table, Verdict
from ._runtime import ES, HAND, RuntimeCase, Variant, run_case
from ._timing import Budget
from .laplacian import field, hand_laplacian, hand_wrap_laplacian


DEVICES = 8
ENV = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}"}
ROLL = "jnp.roll"
ES_SHARDED = "eqx_stencil, 1-device mesh"
N = 512  # 2-D fields are N×N float32
N3 = 64  # the 3-D field is N3³
ONE_DEVICE_BAR = Bar(ES_SHARDED, ES, limit=1.05)
COLLECTIVE_HEADERS = (
    "case (per step)",
    "variant",
    "collective-permutes",
    "bytes sent / device",
    "halo bytes",
    "all-gathers",
    "all-to-alls",
    "bar",
    "met?",
)


def halo_bytes(block: tuple[int, ...], reach: tuple[int, ...], itemsize: int) -> int:
    """Bytes one device sends to exchange a halo of `reach` cells per side and
    sharded dim (0: not sharded) around its `block`, the dims in turn: each
    dim's messages span the halos already received along the earlier ones."""
    extent = list(block)
    total = 0
    for dim, r in enumerate(reach):
        if r:
            total += 2 * r * math.prod(extent[:dim] + extent[dim + 1 :])
            extent[dim] += 2 * r
    return total * itemsize


def _taps5(u: Array) -> Array:
    """The 5-point Laplacian's window function."""
    return u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]


def _hand_pool(u: Array) -> Array:
    """2×2 max pooling, stride 2, by a reshape."""
    n, m = u.shape
    return u.reshape(n // 2, 2, m // 2, 2).max(axis=(1, 3))


def _taps9(u: Array) -> Array:
    """The 9-point Laplacian's window function."""
    edges = u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1]
    corners = u[1, 1] + u[1, -1] + u[-1, 1] + u[-1, -1]
    return (4 * edges + corners - 20 * u[0, 0]) / 6


def _hand9(u: Array) -> Array:
    """The 9-point Laplacian (zero edges) with pad + slices."""
    p = jnp.pad(u, 1)
    edges = p[2:, 1:-1] + p[:-2, 1:-1] + p[1:-1, 2:] + p[1:-1, :-2]
    corners = p[2:, 2:] + p[2:, :-2] + p[:-2, 2:] + p[:-2, :-2]
    return (4 * edges + corners - 20 * p[1:-1, 1:-1]) / 6


def _taps7(u: Array) -> Array:
    """The 3-D 7-point Laplacian's window function."""
    faces = u[1, 0, 0] + u[-1, 0, 0] + u[0, 1, 0] + u[0, -1, 0]
    return faces + u[0, 0, 1] + u[0, 0, -1] - 6 * u[0, 0, 0]


def _hand7(u: Array) -> Array:
    """The 3-D 7-point Laplacian (zero edges) with pad + slices."""
    p = jnp.pad(u, 1)
    c = p[1:-1, 1:-1, 1:-1]
    faces = p[2:, 1:-1, 1:-1] + p[:-2, 1:-1, 1:-1] + p[1:-1, 2:, 1:-1]
    faces += p[1:-1, :-2, 1:-1] + p[1:-1, 1:-1, 2:] + p[1:-1, 1:-1, :-2]
    return faces - 6 * c


def _mesh(shape: tuple[int, ...]) -> Any:
    """An Auto mesh of `shape` over the first devices, axes x, y (, z)."""
    names = ("x", "y", "z")[: len(shape)]
    devices = jax.devices()[: math.prod(shape)]
    return jax.make_mesh(
        shape, names, axis_types=(AxisType.Auto,) * len(shape), devices=devices
    )


def _spec(mesh: Any) -> NamedSharding:
    """Every dim split over its own mesh axis."""
    return NamedSharding(mesh, PartitionSpec(*mesh.axis_names))


def _stencil(func: Callable[[Array], Array], ndim: int, **kwargs: Any) -> Any:
    """A 3-per-dim `"same"` relative stencil of `func`, with `kwargs`."""
    return es.kmap(
        func, kernel_size=(3,) * ndim, padding="same", relative=True, **kwargs
    )


def _row(
    case: str,
    variant: str,
    fn: Callable[[Array], Array],
    x: Array,
    reference: Array,
    halo: int | None,
) -> Row:
    """The collectives of `fn`'s compiled program on `x`, checked against
    `reference`; with `halo`, judged against the halo bytes."""
    program = jax.jit(fn).lower(x).compile()
    np.testing.assert_allclose(program(x), reference, rtol=1e-5, atol=1e-5)
    hlo = program.as_text()
    counts = count_collectives(hlo)
    sent = collective_permute_bytes(hlo)
    verdicts: tuple[Verdict, ...] = ()
    if halo is not None:
        permutes_max = 2 * x.ndim
        met = (
            sent == halo
            and counts["collective-permute"] <= permutes_max
            and counts["all-gather"] == counts["all-to-all"] == 0
        )
        text = f"bytes = halo, ≤ {permutes_max} permutes, no gather"
        verdicts = (Verdict(text, met, None),)
    cells = (
        case,
        variant,
        str(counts["collective-permute"]),
        f"{sent:,}",
        "" if halo is None else f"{halo:,}",
        str(counts["all-gather"]),
        str(counts["all-to-all"]),
    )
    bar = verdicts[0].text if verdicts else ""
    met = verdicts[0].cell if verdicts else ""
    return Row((*cells, bar, met), verdicts)


def _cases() -> list[tuple[str, Array, int, dict[str, Callable[[Array], Array]]]]:
    """Per case: its name, its sharded input, the halo bytes, its variants
    (eqx_stencil first, the partitioner's reference last)."""
    mesh2, mesh3 = _mesh((4, 2)), _mesh((2, 2, 2))
    xy, xyz = _spec(mesh2), _spec(mesh3)
    u = jax.device_put(field(N), xy)
    rng = np.random.default_rng(0)
    v = jax.device_put(rng.standard_normal((N3,) * 3, np.float32), xyz)
    block2, block3 = (N // 4, N // 2), (N3 // 2,) * 3
    halo2, halo3 = halo_bytes(block2, (1, 1), 4), halo_bytes(block3, (1, 1, 1), 4)
    pool = es.kmap(jnp.max, kernel_size=(2, 2), strides=(2, 2), sharding=xy)
    return [
        (
            f"Laplacian 5-pt {N}², zero edges, 4×2",
            u,
            halo2,
            {ES: _stencil(_taps5, 2, sharding=xy), HAND: hand_laplacian()},
        ),
        (
            f"Laplacian 5-pt {N}², periodic, 4×2",
            u,
            halo2,
            {
                ES: _stencil(_taps5, 2, sharding=xy, boundary="wrap"),
                ROLL: hand_wrap_laplacian(),
            },
        ),
        (
            f"Laplacian 9-pt {N}², zero edges, 4×2",
            u,
            halo2,
            {ES: _stencil(_taps9, 2, sharding=xy), HAND: _hand9},
        ),
        (
            f"Laplacian 7-pt {N3}³, zero edges, 2×2×2",
            v,
            halo3,
            {ES: _stencil(_taps7, 3, sharding=xyz), HAND: _hand7},
        ),
        (
            f"max pool 2×2 stride 2 {N}², 4×2",
            u,
            halo_bytes(block2, (0, 0), 4),
            {ES: pool, HAND: _hand_pool},
        ),
    ]


def collectives() -> Table:
    """Collectives per step: eqx_stencil against the partitioner's handling
    of hand-written slices and `jnp.roll` on the same mesh."""
    rows = []
    for case, x, halo, variants in _cases():
        reference = np.asarray(jax.jit(list(variants.values())[-1])(x))
        for name, fn in variants.items():
            halo_or_none = halo if name == ES else None
            rows.append(_row(case, name, fn, x, reference, halo_or_none))
    return Table(COLLECTIVE_HEADERS, tuple(rows))


def one_device_case(n: int = 2048) -> RuntimeCase:
    """The 5-point Laplacian with `sharding=` on a 1-device mesh against the
    plain call and hand-written slices: the cost of the sharded path itself."""
    mesh = _mesh((1, 1))
    variants = [
        Variant(ES, _stencil(_taps5, 2)),
        Variant(ES_SHARDED, _stencil(_taps5, 2, sharding=_spec(mesh))),
        Variant(HAND, hand_laplacian()),
    ]
    return RuntimeCase(
        f"Laplacian {n}², sharded path on a 1-device mesh",
        lambda: (field(n),),
        variants,
        bars=(ONE_DEVICE_BAR,),
    )


def run(budget: Budget) -> tuple[Table, ...]:
    """Both tables; a note row instead when JAX started with too few devices."""
    if jax.device_count() < DEVICES:
        note = (
            f"needs {DEVICES} devices: run it in its own process "
            f"(python -m benchmarks --case sharding) or set {ENV}"
        )
        row = Row(("sharding", "—", note, "", "", "", "", "", ""))
        return (Table(COLLECTIVE_HEADERS, (row,)),)
    return collectives(), run_case(one_device_case(), budget)
