"""`treeclass` decorator and `static_field`."""

from __future__ import annotations

from typing import Any

import equinox as eqx

from ._math import TreeMath
from ._viz import TreeViz


__all__ = ["static_field", "treeclass"]


def static_field(**kwargs: Any) -> Any:
    """A field kept in the tree structure, not as a leaf: `eqx.field(static=True)`.

    **Arguments:**

    - `**kwargs`: passed on to `eqx.field` (e.g. `default=...`).

    **Returns:**

    A dataclass field marked static: math, `jit` and `grad` leave it alone.

    **Example:**

    ```python
    from eqx_stencil.tree import static_field, treeclass


    @treeclass
    class Test:
        a: float
        name: str = static_field()


    print(Test(1.0, "A"))  # name is static: not a leaf of the pytree
    ```
    """
    return eqx.field(static=True, **kwargs)


def treeclass(cls: type) -> type:
    """Turn a plain annotated class into an `eqx.Module` with `TreeMath` and `TreeViz`.

    The class body (annotations, defaults, methods, an optional `__init__` that
    assigns `self.x = ...`) is kept; the result is a frozen Equinox module, so
    it works under `jit`, `grad`, `vmap`, `eqx.filter_*` and `eqx.tree_at`.
    Methods using zero-argument `super()` are not supported (the class object is
    recreated); subclass an existing treeclass instead.

    **Arguments:**

    - `cls`: the class to convert.

    **Returns:**

    A new class with the same name, a subclass of `TreeMath`, `TreeViz` and
    `eqx.Module` (and of `cls`'s own bases).

    **Example:**

    ```python
    from eqx_stencil.tree import static_field, treeclass


    @treeclass
    class Test:
        a: float
        b: float
        name: str = static_field()

    A = Test(10, 20, "A")
    assert (A + A) == Test(20, 40, "A")
    ```
    """
    if not isinstance(cls, type):
        raise TypeError(f"`treeclass` expects a class; got {cls!r}.")
    bases = [b for b in cls.__bases__ if b is not object]
    if not any(issubclass(b, TreeMath) for b in bases):
        bases.insert(0, TreeMath)
    if not any(issubclass(b, TreeViz) for b in bases):
        bases.insert(1, TreeViz)
    if not any(issubclass(b, eqx.Module) for b in bases):
        bases.append(eqx.Module)
    namespace = {
        k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")
    }
    namespace.setdefault("__annotations__", {})
    meta: Any = type(cls) if isinstance(cls, type(eqx.Module)) else type(eqx.Module)
    new = meta(cls.__name__, tuple(bases), namespace)
    new.__qualname__ = cls.__qualname__
    new.__module__ = cls.__module__
    return new
