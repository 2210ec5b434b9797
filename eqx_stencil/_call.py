"""Calls outside a trace: one compiled program per distinct program, never stale.

Called eagerly, a stencil would run as dozens of small XLA computations (and
compile each); compiled as one program it is several times faster. But a
compiled program must not outlive the Python state it was traced from: the
window function reads globals, closure cells, captured NumPy arrays and the
attributes of its arguments, and a call must see their current values, as any
eager JAX function does.

So every eager call traces the stencil to a closed jaxpr (reading the current
Python state; captured arrays become the jaxpr's constants) and looks the
program up by its *fingerprint*: the jaxpr's structure, primitives, parameters,
literal values and abstract values, which are equal exactly when the programs
are. The constants are passed to the compiled program as arguments, so new
values in an unchanged program reuse it without compiling. Inside a user's
`jit` (or `scan`, ...) the stencil is inlined instead. Under a transformation
applied eagerly (`jax.grad(f)(x)`, `jax.vmap`, `check_grads` outside `jit`)
JAX would run each of the stencil's primitives as its own compiled program
(`jax.grad` of the getting-started Laplacian compiled 200 of them, 17 s), so
the stencil is one `jax.jit` there, traced anew at every call.
"""

from __future__ import annotations

import collections
import functools as ft
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np
from jax._src import core as jax_core
from jax.core import Tracer, eval_jaxpr
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal
from jaxtyping import Array, PyTree


# Compiled programs kept, least recently used dropped first.
MAX_PROGRAMS = 256

# Parameters of the custom-derivative primitives holding their rules: a
# program run on concrete arrays never differentiates, so the rules do not
# change it (and they are fresh objects on every trace).
_RULES = {
    "custom_jvp_call": ("jvp_jaxpr_fun", "jvp_jaxpr_thunk", "jvp"),
    "custom_vjp_call": ("fwd_jaxpr_thunk", "fwd", "bwd", "out_trees"),
}

_programs: collections.OrderedDict[Hashable, Callable] = collections.OrderedDict()


class _Same:
    """An unhashable parameter, compared by identity (the key keeps it alive,
    so its identity is not reused)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.value is self.value


def _value(value: Any) -> Hashable:
    array = np.asarray(value)
    return (array.dtype.str, array.shape, array.tobytes())


def _param(value: Any) -> Hashable:
    if isinstance(value, ClosedJaxpr):
        return (fingerprint(value.jaxpr), tuple(_value(c) for c in value.consts))
    if isinstance(value, Jaxpr):
        return fingerprint(value)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_param(item) for item in value))
    if isinstance(value, np.ndarray):
        return _value(value)
    try:
        hash(value)
    except TypeError:
        return _Same(value)
    return (type(value), value)


def fingerprint(jaxpr: Jaxpr) -> Hashable:
    """A key equal for two jaxprs exactly when they are the same program."""
    numbers: dict[Any, int] = {}

    def var(v: Any) -> Hashable:
        return numbers.setdefault(v, len(numbers)), v.aval

    def atom(a: Any) -> Hashable:
        if isinstance(a, Literal):
            return "literal", a.aval, _value(a.val)
        return var(a)

    def eqn(e: Any) -> Hashable:
        skip = _RULES.get(e.primitive.name, ())
        params = tuple(
            (name, _param(value))
            for name, value in sorted(e.params.items())
            if name not in skip
        )
        return (
            e.primitive,
            params,
            tuple(map(atom, e.invars)),
            tuple(map(var, e.outvars)),
            frozenset(e.effects),
        )

    return (
        tuple(map(var, jaxpr.constvars)),
        tuple(map(var, jaxpr.invars)),
        tuple(map(eqn, jaxpr.eqns)),
        tuple(map(atom, jaxpr.outvars)),
    )


def _evaluate(jaxpr: Jaxpr, consts: list) -> list:
    return eval_jaxpr(jaxpr, consts)


def compiled_call(fn: Callable[[], PyTree[Array]]) -> PyTree[Array]:
    """`fn()`, traced now and run as one compiled program (cached by its
    fingerprint, see the module docstring)."""
    structure: list = []

    def flat() -> list:
        leaves, tree = jtu.tree_flatten(fn())
        structure.append(tree)
        return leaves

    closed = jax.make_jaxpr(flat)()
    key = fingerprint(closed.jaxpr)
    program = _programs.pop(key, None)
    if program is None:
        program = jax.jit(ft.partial(_evaluate, closed.jaxpr))
        if len(_programs) >= MAX_PROGRAMS:
            _programs.popitem(last=False)
    _programs[key] = program
    return structure[0].unflatten(program(closed.consts))


def is_traced(tree: Any) -> bool:
    """Whether any leaf of `tree` is a tracer (the call is inside a trace)."""
    return any(isinstance(leaf, Tracer) for leaf in jtu.tree_leaves(tree))


def _under_jit() -> bool:
    """Whether the current trace is a `jit`'s or inside one (JAX's own test;
    without it, assume so: the stencil is then inlined, as before)."""
    test = getattr(jax_core, "unsafe_am_i_under_a_jit", None)
    return True if test is None else bool(test())


def run(fn: Callable[[], PyTree[Array]], inputs: Any) -> PyTree[Array]:
    """`fn()` (which reads `inputs`) as one program: compiled and cached when
    `inputs` hold no tracer, inlined inside a `jit`, else (an eager `grad`,
    `vmap`, ...) one `jax.jit` traced now."""
    if not is_traced(inputs):
        return compiled_call(fn)
    if _under_jit():
        return fn()
    return jax.jit(fn)()
