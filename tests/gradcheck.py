"""First-order gradient checks from one compiled program (shared by tests)."""

from __future__ import annotations

import jax
import numpy as np
from jax.test_util import check_jvp, check_vjp


def check_grads_in_one_program(f, args, out_like, modes, **tolerances):
    """`check_grads(f, args, order=1, modes=modes, **tolerances)` from one
    compiled program that gives the value, the VJP and (with `"fwd"` in
    `modes`) the JVP (`check_grads` compiles `f`, its JVP and `jax.vjp`'s
    linearized and transposed programs);
    returns `f(*args)`. `args` are NumPy values, so that the finite
    differences add and subtract in NumPy, not in programs of their own;
    `out_like` has the output's shape and dtype."""
    forward = "fwd" in modes

    @jax.jit
    def program(args, tangents, cotangent):
        value, pullback = jax.vjp(f, *args)
        tangent_out = jax.jvp(f, args, tangents)[1] if forward else None
        return value, tangent_out, pullback(cotangent)

    zeros = jax.tree.map(np.zeros_like, args)
    no_cotangent = np.zeros_like(out_like)

    def value(*args):
        return program(args, zeros, no_cotangent)[0]

    if forward:
        check_jvp(
            value,
            lambda args, tangents: program(args, tangents, no_cotangent)[:2],
            args,
            **tolerances,
        )
    if "rev" in modes:
        check_vjp(
            value,
            lambda *args: (
                value(*args),
                lambda cotangent: program(args, zeros, cotangent)[2],
            ),
            args,
            **tolerances,
        )
    return value(*args)
