"""kernex 0.2.1's `kernex.viz` namespace, served as `eqx_stencil.kernex.viz`.

Same call signatures as kernex's (`tree_box(model, array=x)`), so the kernex
README's visualisation block runs by changing its import line. The tables
themselves are [`eqx_stencil.tree`][]'s (they add a `Name` column).
"""

from __future__ import annotations

from typing import Any

from ._viz import (
    summary as summary,
    tree_box as _tree_box,
    tree_diagram as tree_diagram,
)


__all__ = ["summary", "tree_box", "tree_diagram"]


def tree_box(model: Any, array: Any = None) -> str:
    """kernex's `viz.tree_box(model, array=x)`: boxes of every submodule call.

    **Arguments:**

    - `model`: a callable `eqx.Module`.
    - `array`: the model's single input (an array or `jax.ShapeDtypeStruct`).

    **Returns:**

    The nested boxes as a string; see [`eqx_stencil.tree.tree_box`][].

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import equinox as eqx
    import eqx_stencil.kernex as kernex

    model = eqx.nn.MLP(2, 1, width_size=8, depth=1, key=jax.random.PRNGKey(0))
    print(kernex.viz.tree_box(model, array=jnp.ones(2)))
    ```
    """
    return _tree_box(model, array)
