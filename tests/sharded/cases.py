"""Sharded stencil cases, run on 8 simulated CPU devices in their own process.

`python tests/sharded/cases.py [name ...]` runs the named cases (all by
default) and prints one JSON line per case: the largest relative error against
the single-device call, the collective counts (and collective-permute bytes)
of the compiled program, or the error a case is meant to raise.
`tests/test_sharding.py` runs it in a subprocess and asserts on the lines.
"""

from __future__ import annotations

import os
import pathlib
import sys


# Eight simulated devices, keeping the flags the test run set (its XLA
# optimisation level).
flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/

import re  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from case_runner import MODES, serve  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import eqx_stencil as es  # noqa: E402
from eqx_stencil._hlo import (  # noqa: E402
    collective_permute_bytes as permute_bytes,
    count_collectives,
)


jax.config.update("jax_enable_x64", False)

MESH = jax.make_mesh((4, 2), ("x", "y"))
AUTO = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
CUBE = jax.make_mesh((2, 2, 2), ("x", "y", "z"))
ONE = jax.make_mesh((1, 1), ("x", "y"))
XY = P("x", "y")

CASES: dict[str, Callable[[], dict]] = {}


def case(func: Callable[[], dict]) -> Callable[[], dict]:
    CASES[func.__name__] = func
    return func


# --- compiled-program inspection -------------------------------------------

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?(%?[\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")


def _computations(hlo: str) -> dict[str, list[str]]:
    """HLO text split into computations: name -> instruction lines."""
    found: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY\s+)?(%?[\w.\-]+)\s.*\{\s*$", line)
        if header:
            current = header.group(1).lstrip("%")
            found[current] = []
            if line.startswith("ENTRY"):
                found["__entry__"] = found[current]
        elif current is not None and line.strip() == "}":
            current = None
        elif current is not None:
            found[current].append(line)
    return found


def interior_check(hlo: str, marker: str, min_elements: int) -> dict:
    """Does a fusion computing `marker` over >= `min_elements` outputs depend
    on no collective-permute (the interior), while some other fusion computing
    it does (the strips read the halos)?"""
    comps = _computations(hlo)
    entry = comps["__entry__"]
    deps: dict[str, set[str]] = {}
    ops: dict[str, tuple[str, str, str]] = {}
    for line in entry:
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        name = name.lstrip("%")
        operands = {o.lstrip("%") for o in re.findall(r"%?([\w.\-]+)", rest)}
        deps[name] = operands
        ops[name] = (shape, op, rest)

    memo: dict[str, bool] = {}

    def reaches_permute(name: str) -> bool:
        if name in memo:
            return memo[name]
        memo[name] = False
        if name not in ops:
            return False
        result = ops[name][1].startswith("collective-permute") or any(
            reaches_permute(o) for o in deps[name] if o in ops
        )
        memo[name] = result
        return result

    def contains_marker(rest: str, seen: set[str]) -> bool:
        for called in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", rest):
            if called in seen or called not in comps:
                continue
            seen.add(called)
            body = "\n".join(comps[called])
            if f" {marker}(" in body or contains_marker(body, seen):
                return True
        return False

    independent, dependent = 0, 0
    for name, (shape, op, rest) in ops.items():
        if op != "fusion" or not contains_marker(rest, set()):
            continue
        dims = re.findall(r"\[([\d,]*)\]", shape)
        size = max(
            (int(np.prod([int(d) for d in s.split(",") if d])) for s in dims), default=0
        )
        if reaches_permute(name):
            dependent += 1
        elif size >= min_elements:
            independent += 1
    return {"independent": independent, "dependent": dependent}


# --- helpers ---------------------------------------------------------------


def counts(hlo: str) -> dict[str, int]:
    found = count_collectives(hlo)
    return {name: found[name] for name in COUNTED}


COUNTED = ("collective-permute", "all-gather", "all-to-all", "all-reduce")


def rel_err(a: Any, b: Any) -> float:
    errs = [
        float(
            np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(y)) + 1e-30)
        )
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    ]
    return max(errs)


def spec_of(tree: Any) -> list[str]:
    return sorted(
        {str(jax.typeof(leaf).sharding.spec) for leaf in jax.tree.leaves(tree)}
    )


def compiled(f: Callable, *args: Any) -> str:
    return jax.jit(f).lower(*args).compile().as_text()


def on_mesh(x: Any, spec: P, mesh: Any = MESH) -> Any:
    return jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, spec)), x)


def compare(
    stencil: Callable,
    x: Any,
    spec: P = XY,
    mesh: Any = MESH,
    *args: Any,
    eager: bool = False,
) -> dict:
    """The stencil on `x` sharded by `spec` (Explicit mesh; compiled, and
    called eagerly if `eager`) against the single-device call."""
    ref = stencil(x, *args)
    with jax.set_mesh(mesh):
        xs = on_mesh(x, spec, mesh)
        program = jax.jit(lambda a: stencil(a, *args)).lower(xs).compile()
        out = program(xs)
        err = rel_err(out, ref)
        if eager:
            err = max(err, rel_err(stencil(xs, *args), ref))
        hlo = program.as_text()
    return {
        "err": err,
        "out_spec": spec_of(out),
        "counts": counts(hlo),
        "bytes": permute_bytes(hlo),
        "hlo": hlo,
    }


def lap5(boundary: str = "constant", **kw: Any) -> es.Stencil:
    return es.kmap(
        lambda u: u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0],
        kernel_size=3,
        padding="same",
        relative=True,
        boundary=boundary,
        cval=0.5,
        **kw,
    )


def lap9(u: Any) -> Any:
    return (
        u[1, 0]
        + u[-1, 0]
        + u[0, 1]
        + u[0, -1]
        + 0.5 * (u[1, 1] + u[-1, -1] + u[1, -1] + u[-1, 1])
        - 6 * u[0, 0]
    )


X = jax.random.normal(jax.random.key(0), (32, 16))
Y = jax.random.normal(jax.random.key(1), (32, 16))


# --- cases -----------------------------------------------------------------

for _mode in MODES:

    def _lap5_case(mode: str = _mode) -> dict:
        return compare(lap5(mode), X, eager=mode in ("constant", "wrap"))

    _lap5_case.__name__ = f"lap5_{_mode}"
    case(_lap5_case)

    def _lap9_case(mode: str = _mode) -> dict:
        stencil = es.kmap(
            lap9, kernel_size=3, padding="same", relative=True, boundary=mode, cval=-1.0
        )
        return compare(stencil, X)

    _lap9_case.__name__ = f"lap9_{_mode}"
    case(_lap9_case)


@case
def wide_halo_one_dim() -> dict:
    """A 5x5 kernel (reach 2) sharded along dim 0 only."""
    stencil = es.kmap(
        lambda w: jnp.sum(w * jnp.arange(25.0).reshape(5, 5)),
        kernel_size=5,
        padding="same",
        boundary="reflect",
    )
    return compare(stencil, X, P("x", None))


@case
def lap7_3d() -> dict:
    stencil = es.kmap(
        lambda u: (
            u[1, 0, 0]
            + u[-1, 0, 0]
            + u[0, 1, 0]
            + u[0, -1, 0]
            + u[0, 0, 1]
            + u[0, 0, -1]
            - 6 * u[0, 0, 0]
        ),
        kernel_size=3,
        padding="same",
        relative=True,
    )
    x = jax.random.normal(jax.random.key(2), (8, 8, 8))
    return compare(stencil, x, P("x", "y", "z"), CUBE)


@case
def pooling() -> dict:
    stencil = es.kmap(jnp.max, kernel_size=2, strides=2)
    return compare(stencil, X)


@case
def avg_pool_3() -> dict:
    stencil = es.kmap(jnp.mean, kernel_size=(2, 4), strides=(2, 4))
    return compare(stencil, X)


@case
def strided() -> dict:
    stencil = es.kmap(
        lambda w: w[0, 0] - 2 * w[2, 2] + w[1, 0],
        kernel_size=3,
        strides=2,
        padding=1,
        boundary="edge",
    )
    return compare(stencil, X)


@case
def dilated() -> dict:
    stencil = es.kmap(
        lambda w: jnp.sum(w * jnp.arange(9.0).reshape(3, 3)),
        kernel_size=3,
        dilation=2,
        padding="same",
        boundary="wrap",
    )
    return compare(stencil, X)


@case
def cropping() -> dict:
    """Negative padding on one side: each shard reads its neighbour's rows."""
    stencil = es.kmap(
        lambda w: w[0, 0] + 2 * w[1, 1],
        kernel_size=2,
        padding=((-1, 2), (0, 1)),
        boundary="symmetric",
    )
    return compare(stencil, X)


@case
def patches() -> dict:
    stencil = es.kmap(lambda w: w, kernel_size=3, padding="same")
    return compare(stencil, X)


@case
def regions_slices() -> dict:
    stencil = (
        lap5("edge")
        .at[0]
        .set(lambda u: u[0, 0] * 3.0)
        .at[:, -1]
        .set(lambda u: u[0, -1] - u[0, 0])
        .at[5:19:2, 3:7]
        .set(lambda u: jnp.sin(u[1, 1]))
    )
    return compare(stencil, X)


@case
def regions_mask() -> dict:
    mask = np.zeros(X.shape, bool)
    mask[3:20, 2:5] = True
    mask[25, 9] = True
    stencil = lap5("wrap").at[mask].set(lambda u: u[0, 0] ** 2)
    return compare(stencil, X)


@case
def data_region() -> dict:
    """A region given by a jax.Array mask (a hidden field, split like the input)."""
    mask = jax.random.uniform(jax.random.key(7), X.shape) > 0.5
    return compare(lap5("edge").at[mask].set(lambda u: u[0, 0] * 3.0), X)


@case
def region_one_shard() -> dict:
    """A region inside one shard: the other shards run a program without it."""
    stencil = lap5().at[1:3, 1:3].set(lambda u: jnp.cos(u[0, 0]))
    found = compare(stencil, X)
    return {**found, "cosines": found["hlo"].count(" cosine(")}


@case
def multi_field() -> dict:
    stencil = es.kmap(
        lambda w: (w[0][1, 0] - w[1][0, -1], w[0][0, 0] * w[1][1, 1]),
        kernel_size=3,
        padding="same",
        relative=True,
        boundary="wrap",
    )
    return compare(stencil, (X, Y))


@case
def extra_args() -> dict:
    weights = jnp.arange(9.0).reshape(3, 3)
    stencil = es.kmap(lambda w, k, c: jnp.sum(w * k) + c, kernel_size=3, padding="same")
    return compare(stencil, X, P("x", "y"), MESH, weights, 2.0)


@case
def smap_offset() -> dict:
    stencil = es.smap(
        lambda x: x[1, 0] - x[0, 0],
        kernel_size=3,
        relative=True,
        offset=((2, 1), (1, 3)),
        strides=(1, 2),
    )
    return compare(stencil, X)


@case
def kscan_unswept() -> dict:
    """A time-marching kscan along dim 0, sharded along dim 1 only."""
    stencil = es.kscan(
        lambda x: x[-1, 0] * 0.5 + x[0, 0],
        kernel_size=(3, 1),
        padding=(1, 0),
        relative=True,
    )
    return compare(stencil, X, P(None, "y"))


@case
def sscan_unswept() -> dict:
    stencil = es.sscan(
        lambda x: x[0, 0] + x[-1, 0],
        kernel_size=(3, 1),
        relative=True,
        offset=((1, 0), (0, 0)),
    )
    return compare(stencil, X, P(None, "y"))


@case
def kscan_swept_axis() -> dict:
    stencil = es.kscan(
        lambda x: x[-1, 0] + x[0, 0], kernel_size=(3, 1), padding=(1, 0), relative=True
    )
    return compare(stencil, X, P("x", None))


@case
def kscan_neighbour_updates() -> dict:
    stencil = es.kscan(
        lambda x: x[-1, -1] + x[-1, 1], kernel_size=3, padding=1, relative=True
    )
    return compare(stencil, X, P(None, "y"))


@case
def halo_too_wide() -> dict:
    stencil = es.kmap(jnp.sum, kernel_size=(3, 19), padding="same")
    return compare(stencil, X)


@case
def uneven_output() -> dict:
    stencil = es.kmap(jnp.sum, kernel_size=3)  # valid: 30 x 14 outputs
    return compare(stencil, X)


@case
def mixed_fields() -> dict:
    stencil = es.kmap(lambda w: w[0][0, 0] + w[1][0, 0], kernel_size=1)
    with jax.set_mesh(MESH):
        return {"out": str(stencil((on_mesh(X, P("x", "y")), on_mesh(Y, P("x")))))}


@case
def bad_sharding_type() -> dict:
    es.kmap(jnp.sum, kernel_size=3, sharding=P("x"))  # pyright: ignore
    return {}


@case
def two_mesh_axes_one_dim() -> dict:
    """One dim split over both mesh axes, named against the mesh's order."""
    stencil = es.kmap(
        lambda u: u[-1, 0] - 2 * u[0, 0] + u[1, 1],
        kernel_size=3,
        padding="same",
        relative=True,
        boundary="wrap",
    )
    return compare(stencil, X, P(("y", "x"), None))


@case
def vmapped() -> dict:
    """`jax.vmap` over a batch of spatially sharded fields."""
    batch = jax.random.normal(jax.random.key(8), (3, 32, 16))
    return compare(jax.vmap(lap5("wrap")), batch, P(None, "x", "y"))


@case
def replicated_dim() -> dict:
    """Sharded along dim 0 only on the 2-D mesh (output replicated over y)."""
    return compare(lap5("reflect"), X, P("x", None))


@case
def auto_mesh() -> dict:
    """Auto axes: the stencil's own sharding= constrains the input."""
    sharding = NamedSharding(AUTO, P("x", "y"))
    stencil = lap5("wrap", sharding=sharding)
    ref = lap5("wrap")(X)
    x = jax.device_put(X, sharding)
    out = jax.jit(stencil)(x)
    hlo = compiled(stencil, x)
    unsharded = compiled(lap5("wrap"), x)
    return {
        "err": rel_err(out, ref),
        "counts": counts(hlo),
        "bytes": permute_bytes(hlo),
        "out_sharding": str(out.sharding.spec),
        "partitioner_counts": counts(unsharded),
    }


@case
def one_device_mesh() -> dict:
    return compare(lap5("edge"), X, P("x", "y"), ONE)


for _mode in ("wrap", "constant"):

    def _interior_case(mode: str = _mode) -> dict:
        stencil = es.kmap(
            lambda u: jnp.sin(u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]),
            kernel_size=3,
            padding="same",
            relative=True,
            boundary=mode,
        )
        x = jax.random.normal(jax.random.key(3), (128, 64))
        with jax.set_mesh(MESH):
            hlo = compiled(stencil, on_mesh(x, P("x", "y")))
        return {**interior_check(hlo, "sine", 30 * 30), "counts": counts(hlo)}

    _interior_case.__name__ = f"interior_independent_{_mode}"
    case(_interior_case)


@case
def interior_independent_regions() -> dict:
    """Boundary conditions as regions: the edge shards run programs of their
    own, but the interior they share is computed before the switch."""
    stencil = (
        es.kmap(
            lambda u: jnp.sin(u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0]),
            kernel_size=3,
            padding="same",
            relative=True,
        )
        .at[0]
        .set(lambda u: u[0, 0] * 2.0)
        .at[:, -1]
        .set(lambda u: u[0, 0] - u[0, -1])
    )
    found = compare(stencil, jax.random.normal(jax.random.key(3), (128, 64)))
    return {
        **found,
        **interior_check(found["hlo"], "sine", 30 * 30),
        "conditionals": found["hlo"].count(" conditional("),
    }


@case
def explicit_resharded() -> dict:
    """sharding= on an input sharded otherwise: the stencil's sharding wins."""
    stencil = lap5("edge", sharding=NamedSharding(MESH, P("x", None)))
    return compare(stencil, X)


def _solver(k: Any, u0: Any) -> Any:
    heat = es.kmap(
        lambda u, k: (
            u[0, 0] + k * (u[1, 0] + u[-1, 0] + u[0, 1] + u[0, -1] - 4 * u[0, 0])
        ),
        kernel_size=3,
        padding="same",
        relative=True,
        boundary="edge",
    )
    u = es.iterate(lambda u: heat(u, k), u0, 10, checkpoint_every=5)
    return jnp.sum(u**2)


@case
def solver_gradients() -> dict:
    k = jnp.asarray(0.1)
    u0 = jax.random.normal(jax.random.key(4), (32, 16))
    grad = jax.grad(_solver, argnums=(0, 1))
    jvp = jax.jit(lambda k, u: jax.jvp(_solver, (k, u), (jnp.asarray(1.0), u)))
    ref_grad = jax.jit(grad)(k, u0)
    ref_jvp = jvp(k, u0)
    with jax.set_mesh(MESH):
        us = on_mesh(u0, P("x", "y"))
        program = jax.jit(grad).lower(k, us).compile()
        got_grad = program(k, us)
        got_jvp = jax.jit(lambda k, u: jax.jvp(_solver, (k, u), (jnp.asarray(1.0), u)))(
            k, us
        )
        hlo = program.as_text()
    return {
        "err": max(rel_err(got_grad, ref_grad), rel_err(got_jvp, ref_jvp)),
        "counts": counts(hlo),
        "grad_spec": spec_of(got_grad[1]),
    }


def _deep(mode: str, num_steps: int, every: int | None, kappa: Any, u0: Any) -> Any:
    heat = es.kmap(
        lambda u, k: u[0, 0] + k * lap9(u),
        kernel_size=3,
        padding="same",
        relative=True,
        boundary=mode,
        cval=0.25,
    )
    return es.iterate(lambda u: heat(u, kappa), u0, num_steps, halo_every=every)


for _mode in ("wrap", "constant", "reflect"):

    def _deep_case(mode: str = _mode) -> dict:
        """12 steps with one exchange every 4 (wrap also 10: a remainder block)."""
        u0 = jax.random.normal(jax.random.key(5), (32, 16))
        ref = jax.jit(lambda u: _deep(mode, 12, None, 0.1, u))(u0)
        with jax.set_mesh(MESH):
            us = on_mesh(u0, XY)
            program = jax.jit(lambda u: _deep(mode, 12, 4, 0.1, u)).lower(us).compile()
            out = program(us)
            err = rel_err(out, ref)
            if mode == "wrap":
                ref10 = jax.jit(lambda u: _deep(mode, 10, None, 0.1, u))(u0)
                out10 = jax.jit(lambda u: _deep(mode, 10, 4, 0.1, u))(us)
                err = max(err, rel_err(out10, ref10))
            hlo = program.as_text()
        return {"err": err, "counts": counts(hlo), "out_spec": spec_of(out)}

    _deep_case.__name__ = f"deep_halo_{_mode}"
    case(_deep_case)


@case
def deep_halo_gradient() -> dict:
    u0 = jax.random.normal(jax.random.key(6), (32, 16))

    def loss(k: Any, u: Any, every: int | None) -> Any:
        return jnp.sum(_deep("wrap", 10, every, k, u) ** 2)

    grad = jax.grad(loss, argnums=(0, 1))
    ref = jax.jit(lambda k, u: grad(k, u, None))(0.1, u0)
    with jax.set_mesh(MESH):
        program = jax.jit(lambda k, u: grad(k, u, 5)).lower(0.1, on_mesh(u0, XY))
        program = program.compile()
        got = program(0.1, on_mesh(u0, XY))
        hlo = program.as_text()
    return {"err": rel_err(got, ref), "counts": counts(hlo)}


@case
def deep_halo_too_deep() -> dict:
    u0 = jax.random.normal(jax.random.key(6), (32, 16))
    with jax.set_mesh(MESH):
        return {
            "out": str(jax.jit(lambda u: _deep("wrap", 20, 9, 0.1, u))(on_mesh(u0, XY)))
        }


@case
def deep_halo_unsharded() -> dict:
    u0 = jax.random.normal(jax.random.key(6), (32, 16))
    return {"out": str(_deep("wrap", 4, 2, 0.1, u0))}


if __name__ == "__main__":
    serve(CASES)
