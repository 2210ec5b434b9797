"""A function applied to the identity matrix, without multiplying by it.

`_conv_lowering` reads a linear window function's weights by applying its
transpose to every unit vector: `jax.vmap` over the rows of an identity
matrix. A function written with `dot_general` (`jnp.tensordot`, `einsum`,
`@`) then computes `dot(identity, weights)`, which XLA neither folds nor
skips: every call of `es.nn.Conv2d(16, 16, 3)` ran a 16×16 by 16×144 matrix
product and two layout copies besides its convolution. Here the function is
traced on an identity that is never built: a contraction with it is a
`moveaxis` of the other operand, a same-shape reshape, transpose, copy or
cast keeps it, and any other use reads `jnp.eye`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core
from jaxtyping import Array


class _Identity(NamedTuple):
    """The `n`×`n` identity matrix of `dtype`, not built."""

    n: int
    dtype: Any

    def build(self) -> Array:
        return jnp.eye(self.n, dtype=self.dtype)


# Primitives that map an n×n identity to itself when their one output is n×n.
_KEEP = {"convert_element_type", "copy", "copy_p", "reshape", "split", "transpose"}
_CALLS = {"jit", "pjit"}


def on_identity(fn: Callable[[Array], Array], n: int, dtype: Any) -> Array:
    """`fn(jnp.eye(n, dtype=dtype))`, with every contraction of the identity
    read off the other operand instead of computed.

    **Arguments:**

    - `fn`: a function of one `(n, n)` array, returning one array.
    - `n`, `dtype`: the identity's size and dtype.

    **Returns:**

    What `fn` returns on the identity.

    **Example:**

    ```python
    w = jnp.arange(6.0).reshape(2, 3)
    rows = on_identity(lambda e: e @ w, 2, jnp.float32)  # w, no product
    ```
    """
    closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct((n, n), dtype))
    (out,) = _eval_with_identities(closed.jaxpr, closed.consts, [_Identity(n, dtype)])
    return out.build() if isinstance(out, _Identity) else out


def _eval_with_identities(
    jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]
) -> list[Any]:
    """`jax.core.eval_jaxpr` where some values may be an `_Identity`."""
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))

    def read(var: Any) -> Any:
        return var.val if isinstance(var, jex_core.Literal) else env[var]

    for eqn in jaxpr.eqns:
        values = [read(var) for var in eqn.invars]
        outs = None
        if any(isinstance(value, _Identity) for value in values):
            outs = _rule(eqn, values)
        if outs is None:
            built = [v.build() if isinstance(v, _Identity) else v for v in values]
            # `(subfuns, params)` before jax 0.8, `params` since.
            bound = eqn.primitive.get_bind_params(eqn.params)
            subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*subfuns, *built, **params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(var) for var in jaxpr.outvars]


def _rule(eqn: Any, values: list[Any]) -> list[Any] | None:
    """The outputs of `eqn` on `values`, some of them identities, or `None`
    to build the identities and bind the primitive."""
    name = eqn.primitive.name
    if name in _CALLS:
        closed = eqn.params["jaxpr"]
        return _eval_with_identities(closed.jaxpr, closed.consts, values)
    if name == "dot_general":
        out = _contract(eqn.params["dimension_numbers"], *values)
        return None if out is None else [out.astype(eqn.outvars[0].aval.dtype)]
    if name in _KEEP and len(values) == len(eqn.outvars) == 1:
        (identity,) = values
        aval = eqn.outvars[0].aval
        if aval.shape == (identity.n, identity.n):
            return [_Identity(identity.n, aval.dtype)]
    return None


def _contract(dimension_numbers: Any, lhs: Any, rhs: Any) -> Array | None:
    """`dot_general(lhs, rhs)` when exactly one side is an identity
    contracted over one dim (no batch dims): the other side with its
    contracted dim where the identity's free dim goes."""
    (lhs_contract, rhs_contract), batch = dimension_numbers
    if any(batch) or len(lhs_contract) != 1:
        return None
    if isinstance(lhs, _Identity) and not isinstance(rhs, _Identity):
        return jnp.moveaxis(rhs, rhs_contract[0], 0)
    if isinstance(rhs, _Identity) and not isinstance(lhs, _Identity):
        return jnp.moveaxis(lhs, lhs_contract[0], -1)
    return None
