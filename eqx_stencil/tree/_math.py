"""`TreeMath`: leafwise arithmetic, comparison masks, selection and reductions."""

from __future__ import annotations

import dataclasses
import functools
import operator
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.core import Tracer


__all__ = ["TreeMath"]

_T = TypeVar("_T", bound="TreeMath")

_NUMBER_TYPES = (bool, int, float, complex, np.generic, np.ndarray, jax.Array)


def _is_none(x: Any) -> bool:
    return x is None


def _is_numeric(x: Any) -> bool:
    return isinstance(x, _NUMBER_TYPES)


def _flatten(tree: Any) -> tuple[list[Any], Any]:
    return jtu.tree_flatten(tree, is_leaf=_is_none)


def _other_leaves(self: TreeMath, treedef: Any, other: Any, n: int) -> list[Any]:
    """Leaves of `other` matching `self`'s leaves, or `other` broadcast as a scalar."""
    if isinstance(other, TreeMath):
        try:
            return treedef.flatten_up_to(other)
        except ValueError as err:
            raise TypeError(
                f"Cannot combine `{type(self).__name__}` with "
                f"`{type(other).__name__}` leafwise: the trees have different "
                f"structures or static fields ({err}). Accepted: a scalar, an array "
                "or a tree with the same structure and static fields."
            ) from None
    return [other] * n


def _binary(self: _T, other: Any, op: Callable[[Any, Any], Any]) -> _T:
    leaves, treedef = _flatten(self)
    others = _other_leaves(self, treedef, other, len(leaves))
    out = [
        x if (x is None or y is None) else op(x, y)
        for x, y in zip(leaves, others, strict=True)
    ]
    return jtu.tree_unflatten(treedef, out)


def _rbinary(self: _T, other: Any, op: Callable[[Any, Any], Any]) -> _T:
    return _binary(self, other, lambda x, y: op(y, x))


def _unary(self: _T, op: Callable[[Any], Any]) -> _T:
    leaves, treedef = _flatten(self)
    return jtu.tree_unflatten(
        treedef, [x if x is None or not _is_numeric(x) else op(x) for x in leaves]
    )


def _compare(
    self: _T, other: Any, op: Callable[[Any, Any], Any], one_none: bool | None
) -> _T:
    """Leafwise comparison; `one_none` is the result where exactly one side is None."""
    leaves, treedef = _flatten(self)
    if isinstance(other, TreeMath) and op in (operator.eq, operator.ne):
        try:
            others = treedef.flatten_up_to(other)
        except ValueError:
            # Different structure or static fields: never equal.
            value = op is operator.ne
            return jtu.tree_unflatten(
                treedef, [None if x is None else value for x in leaves]
            )
    else:
        others = _other_leaves(self, treedef, other, len(leaves))
    out = []
    for x, y in zip(leaves, others, strict=True):
        if x is None and y is None:
            out.append(None)
        elif x is None or y is None:
            out.append(one_none)
        else:
            out.append(op(x, y))
    return jtu.tree_unflatten(treedef, out)


def _mask_leaf_truth(leaf: Any) -> bool:
    if isinstance(leaf, Tracer):
        raise TypeError(
            "`bool(mask)` needs concrete values, but a mask leaf is a traced value "
            f"({leaf}). Reduce the mask inside the transformation instead, e.g. "
            "`jnp.all(jnp.stack([jnp.all(x) for x in "
            "jax.tree_util.tree_leaves(mask)]))`."
        )
    return bool(np.all(np.asarray(leaf)))


def _is_bool_leaf(leaf: Any) -> bool:
    if isinstance(leaf, bool | np.bool_):
        return True
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and np.dtype(dtype) == np.bool_


@dataclasses.dataclass(frozen=True)
class _RegisteredOp:
    """An operation added by `TreeMath.register_op`."""

    func: Callable[[Any], Any]
    reduce_op: Callable[[Any, Any], Any] | None
    init_val: Any


# The operations each class registered, by name. Classes are weak keys, so a
# class defined in a function (a test, a notebook cell) can still be collected.
_REGISTRY: weakref.WeakKeyDictionary[type, dict[str, _RegisteredOp]] = (
    weakref.WeakKeyDictionary()
)


def _registry_lookup(cls: type, name: str) -> _RegisteredOp | None:
    """The operation `name` registered on `cls` or its nearest base class."""
    for kls in cls.__mro__:
        table = _REGISTRY.get(kls)
        if table is not None and name in table:
            return table[name]
    return None


class _MaskedAt:
    """`tree.at[mask]`: functional update of the elements selected by a mask."""

    def __init__(self, tree: TreeMath, mask: Any):
        self._tree = tree
        self._mask = mask

    def _update(self, make: Callable[[Any, Any], Any], value: Any) -> Any:
        leaves, treedef = _flatten(self._tree)
        if isinstance(self._mask, TreeMath):
            try:
                masks = treedef.flatten_up_to(self._mask)
            except ValueError as err:
                raise TypeError(
                    "`.at[mask]`: `mask` must have the same structure as the tree "
                    f"(e.g. `tree > 0`); got {type(self._mask).__name__} ({err})."
                ) from None
        else:
            masks = [self._mask] * len(leaves)
        values = _other_leaves(self._tree, treedef, value, len(leaves))
        out = []
        for x, m, v in zip(leaves, masks, values, strict=True):
            if x is None or m is None or v is None or not _is_numeric(x):
                out.append(x)
            elif isinstance(m, bool | np.bool_) and not isinstance(
                x, np.ndarray | jax.Array
            ):
                out.append(make(x, v) if m else x)
            else:
                out.append(jnp.where(m, make(x, v), x))
        return jtu.tree_unflatten(treedef, out)

    def set(self, value: Any) -> Any:
        """Replace the masked elements.

        **Arguments:**

        - `value`: a scalar, an array or a tree of the same structure.

        **Returns:**

        A new tree; `A.at[A > 10].set(0)` zeroes every element above 10.
        """
        return self._update(lambda x, v: v, value)

    def apply(self, func: Callable[[Any], Any]) -> Any:
        """Apply `func` to the masked elements.

        **Arguments:**

        - `func`: an elementwise function of a leaf.

        **Returns:**

        A new tree; `A.at[A < 0].apply(abs)` flips negative elements.
        """
        return self._update(lambda x, _: func(x), 0)


class _AtIndexer:
    def __init__(self, tree: TreeMath):
        self._tree = tree

    def __getitem__(self, mask: Any) -> _MaskedAt:
        return _MaskedAt(self._tree, mask)


class TreeMath:
    """Mixin for `eqx.Module` adding leafwise math, masks and reductions.

    Arithmetic (`+ - * / // % **`, unary `- + abs`) applies leaf by leaf with a
    scalar/array or with a tree of the same structure; static fields are left
    untouched and `None` leaves pass through. Comparisons return a *mask*: an
    instance of the same class with boolean leaves; `bool(mask)` is `True` iff
    every leaf is all-`True` (leaves that are `None` are skipped).

    `==` is a comparison too: unlike a plain `eqx.Module`, `A == B` is a mask,
    and `bool(A == B)` is `True` only when every leaf is equal (so
    `assert A == B` is a real check on concrete trees). `bool(A != B)` is `True`
    only when *every* leaf differs: write `not (A == B)` for "some leaf
    differs", and `eqx.tree_equal(A, B)` for Equinox's meaning of `==`.

    !!! Example

        ```python
        import equinox as eqx
        from eqx_stencil.tree import TreeMath


        class Test(TreeMath, eqx.Module):
            a: float
            b: float
            name: str = eqx.field(static=True)

        A = Test(10, 20, "A")
        assert A + A == Test(20, 40, "A")
        assert A[A > 10] == Test(None, 20, "A")
        ```
    """

    def __add__(self: _T, other: Any) -> _T:
        return _binary(self, other, operator.add)

    def __radd__(self: _T, other: Any) -> _T:
        return _rbinary(self, other, operator.add)

    def __sub__(self: _T, other: Any) -> _T:
        return _binary(self, other, operator.sub)

    def __rsub__(self: _T, other: Any) -> _T:
        return _rbinary(self, other, operator.sub)

    def __mul__(self: _T, other: Any) -> _T:
        return _binary(self, other, operator.mul)

    def __rmul__(self: _T, other: Any) -> _T:
        return _rbinary(self, other, operator.mul)

    def __truediv__(self: _T, other: Any) -> _T:
        return _binary(self, other, operator.truediv)

    def __rtruediv__(self: _T, other: Any) -> _T:
        return _rbinary(self, other, operator.truediv)

    def __floordiv__(self: _T, other: Any) -> _T:
        return _binary(self, other, operator.floordiv)

    def __rfloordiv__(self: _T, other: Any) -> _T:
        return _rbinary(self, other, operator.floordiv)

    def __mod__(self: _T, other: Any) -> _T:
        return _binary(self, other, operator.mod)

    def __rmod__(self: _T, other: Any) -> _T:
        return _rbinary(self, other, operator.mod)

    def __pow__(self: _T, other: Any) -> _T:
        return _binary(self, other, operator.pow)

    def __rpow__(self: _T, other: Any) -> _T:
        return _rbinary(self, other, operator.pow)

    def __neg__(self: _T) -> _T:
        return _unary(self, operator.neg)

    def __pos__(self: _T) -> _T:
        return _unary(self, operator.pos)

    def __abs__(self: _T) -> _T:
        return _unary(self, abs)

    def __eq__(self: _T, other: Any) -> _T:  # pyright: ignore[reportIncompatibleMethodOverride]
        """Leafwise `==` mask: `A == B` is a tree of booleans, not a `bool`.

        This changes what `==` means for an `eqx.Module` (Equinox compares two
        modules as one `bool`). `bool(A == B)` is `True` only when every leaf
        is equal, so `assert A == B` and `if A == B:` still test equality of
        concrete trees. Trees of different structure or static fields give an
        all-`False` mask; a leaf that is `None` on one side only compares
        `False`. Under `jit`/`vmap`/`grad` the leaves are traced, and
        `bool(A == B)` raises `TypeError`: reduce the mask there instead.
        Use `eqx.tree_equal(A, B)` for Equinox's meaning.
        """
        return _compare(self, other, operator.eq, False)

    def __ne__(self: _T, other: Any) -> _T:  # pyright: ignore[reportIncompatibleMethodOverride]
        """Leafwise `!=` mask. `bool(A != B)` is True only if *every* leaf
        differs; to test "some leaf differs" write `not (A == B)`."""
        return _compare(self, other, operator.ne, True)

    def __lt__(self: _T, other: Any) -> _T:
        return _compare(self, other, operator.lt, None)

    def __le__(self: _T, other: Any) -> _T:
        return _compare(self, other, operator.le, None)

    def __gt__(self: _T, other: Any) -> _T:
        return _compare(self, other, operator.gt, None)

    def __ge__(self: _T, other: Any) -> _T:
        return _compare(self, other, operator.ge, None)

    def __hash__(self) -> int:
        # Defining `__eq__` would otherwise remove the hash; keep Equinox's.
        return hash(
            (type(self), tuple(jtu.tree_leaves(self)), jtu.tree_structure(self))
        )

    def __bool__(self) -> bool:
        """`True` iff every boolean leaf is all-`True` (a mask is a real check).

        Trees holding non-boolean leaves are truthy like any object. Raises
        `TypeError` on traced mask leaves (inside `jit`/`vmap`/`grad`).
        """
        leaves = [x for x in _flatten(self)[0] if x is not None]
        if not all(_is_bool_leaf(x) for x in leaves):
            return True
        return all(_mask_leaf_truth(x) for x in leaves)

    def _field_names(self) -> list[str]:
        paths, _ = jtu.tree_flatten_with_path(self, is_leaf=lambda x: x is not self)
        return [path[0].name for path, _ in paths]

    def __getitem__(self: _T, where: Any) -> _T:
        """Select fields by name (`A["a"]`, `A[["a", "b"]]`) or leaves by a
        scalar mask of the same class (`A[A > 10]`); everything else becomes
        `None`.
        """
        children, treedef = jtu.tree_flatten(self, is_leaf=lambda x: x is not self)
        names = self._field_names()
        if isinstance(where, str) or (
            isinstance(where, Sequence)
            and not isinstance(where, str)
            and all(isinstance(w, str) for w in where)
        ):
            wanted = {where} if isinstance(where, str) else set(where)
            unknown = wanted - set(names)
            if unknown:
                raise KeyError(
                    f"`{type(self).__name__}[...]`: unknown field(s) "
                    f"{sorted(unknown)}; the (non-static) fields are {names}."
                )
            out = [c if n in wanted else None for n, c in zip(names, children)]
            return jtu.tree_unflatten(treedef, out)
        if isinstance(where, TreeMath):
            leaves, ltreedef = _flatten(self)
            try:
                masks = ltreedef.flatten_up_to(where)
            except ValueError as err:
                raise TypeError(
                    f"`{type(self).__name__}[mask]`: `mask` must have the same "
                    f"structure as the tree (e.g. `tree > 0`); ({err})."
                ) from None
            out = []
            for x, m in zip(leaves, masks, strict=True):
                if m is None:
                    out.append(None)
                    continue
                if isinstance(m, Tracer) or np.ndim(m) != 0:
                    raise TypeError(
                        f"`{type(self).__name__}[mask]` selects whole leaves and "
                        "needs concrete scalar boolean mask leaves; got "
                        f"{m!r}. For elementwise masks use `tree.at[mask].set(v)`."
                    )
                out.append(x if bool(m) else None)
            return jtu.tree_unflatten(ltreedef, out)
        raise TypeError(
            f"`{type(self).__name__}[...]`: expected a field name, a list of field "
            f"names or a mask of the same class; got {where!r}."
        )

    def __or__(self: _T, other: Any) -> _T:
        """Merge two trees: each leaf is the first non-`None` of the two."""
        if not isinstance(other, TreeMath):
            return NotImplemented
        return _binary_merge(self, other)

    @property
    def at(self) -> _AtIndexer:
        """`tree.at[mask].set(value)` / `tree.at[mask].apply(func)`: functional
        update of the elements where an (elementwise) mask is `True`.

        **Example:** `A.at[A > 10].set(0)`.
        """
        return _AtIndexer(self)

    def _reduce(
        self,
        func: Callable[[Any], Any],
        reduce_op: Callable[[Any, Any], Any],
        init_val: Any,
    ) -> Any:
        acc = init_val
        for x in _flatten(self)[0]:
            if x is None or not _is_numeric(x):
                continue
            acc = reduce_op(acc, func(x))
        return acc

    def reduce_sum(self) -> Any:
        """Sum of every leaf's elements (per-leaf sums added together).

        **Returns:** a scalar (JAX array); `None` and non-numeric leaves are
        skipped.

        **Example:** `Test(1, 2, 3, "A").reduce_sum() == 6`.
        """
        return self._reduce(jnp.sum, operator.add, 0)

    def reduce_mean(self) -> Any:
        """Per-leaf means added together (kernex's semantics).

        **Returns:** a scalar (JAX array); `None` and non-numeric leaves are
        skipped.

        **Example:** leaves `100, 400, 900` give `1400`.
        """
        return self._reduce(jnp.mean, operator.add, 0)

    def reduce_max(self) -> Any:
        """Maximum over every leaf's elements.

        **Returns:** a scalar (JAX array); `None` and non-numeric leaves are
        skipped.

        **Example:** `Test(1, 2, 3, "A").reduce_max() == 3`.
        """
        return self._reduce(jnp.max, jnp.maximum, -jnp.inf)

    def reduce_min(self) -> Any:
        """Minimum over every leaf's elements.

        **Returns:** a scalar (JAX array); `None` and non-numeric leaves are
        skipped.

        **Example:** `Test(1, 2, 3, "A").reduce_min() == 1`.
        """
        return self._reduce(jnp.min, jnp.minimum, jnp.inf)

    def reduce_prod(self) -> Any:
        """Product of every leaf's elements (per-leaf products multiplied).

        **Returns:** a scalar (JAX array); `None` and non-numeric leaves are
        skipped.

        **Example:** `Test(1, 2, 3, "A").reduce_prod() == 6`.
        """
        return self._reduce(jnp.prod, operator.mul, 1)

    @classmethod
    def register_op(
        cls,
        func: Callable[[Any], Any],
        name: str,
        reduce_op: Callable[[Any, Any], Any] | None = None,
        init_val: Any = None,
    ) -> None:
        """Register a leafwise operation on this class.

        A class method: `Test.register_op(...)` and, as in kernex,
        `instance.register_op(...)` both register on the class, for every
        instance of it and of its subclasses, never on other classes.

        **Arguments:**

        - `func`: applied to every non-`None` leaf.
        - `name`: `obj.name()` then returns a tree of the same class.
        - `reduce_op`: optional `(accumulated, leaf_result) -> accumulated`; when
            given, `obj.reduce_name()` folds the per-leaf results, starting at
            `init_val`.
        - `init_val`: the initial accumulator for `reduce_op`.

        **Returns:**

        `None`.

        **Example:**

        ```python
        import equinox as eqx
        import jax.numpy as jnp
        from eqx_stencil.tree import TreeMath


        class C(TreeMath, eqx.Module):
            a: jnp.ndarray
            b: jnp.ndarray


        C.register_op(jnp.prod, "product", lambda x, y: x * y, 1.0)
        c = C(jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]))
        print(c.product())  # C(a=2.0, b=12.0), leaf by leaf
        print(c.reduce_product())  # 24.0, across leaves
        ```
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"`register_op`: `name` must be a Python identifier; got {name!r}."
            )
        if not callable(func):
            raise TypeError(f"`register_op`: `func` must be callable; got {func!r}.")
        if reduce_op is not None and not callable(reduce_op):
            raise TypeError(
                f"`register_op`: `reduce_op` must be callable or None; got "
                f"{reduce_op!r}."
            )
        _REGISTRY.setdefault(cls, {})[name] = _RegisteredOp(func, reduce_op, init_val)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: serve registered operations.
        if not name.startswith("__"):
            op = _registry_lookup(type(self), name)
            if op is not None:
                return lambda: _unary(self, op.func)
            if name.startswith("reduce_"):
                op = _registry_lookup(type(self), name.removeprefix("reduce_"))
                if op is not None and op.reduce_op is not None:
                    return functools.partial(
                        self._reduce, op.func, op.reduce_op, op.init_val
                    )
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}"
        )


def _binary_merge(self: _T, other: TreeMath) -> _T:
    leaves, treedef = _flatten(self)
    try:
        others = treedef.flatten_up_to(other)
    except ValueError as err:
        raise TypeError(
            f"`{type(self).__name__} | {type(other).__name__}`: the trees must "
            f"have the same structure and static fields ({err})."
        ) from None
    out = [y if x is None else x for x, y in zip(leaves, others, strict=True)]
    return jtu.tree_unflatten(treedef, out)
