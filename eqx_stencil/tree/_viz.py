"""Model visualisation: `summary`, `tree_diagram`, `tree_box`, `tree_mermaid`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np


__all__ = ["TreeViz", "summary", "tree_box", "tree_diagram", "tree_mermaid"]


_DTYPE_SHORT = {
    "bool": "bool",
    "bfloat16": "bf16",
}


def _short_dtype(dtype: Any) -> str:
    name = np.dtype(dtype).name
    if name in _DTYPE_SHORT:
        return _DTYPE_SHORT[name]
    for prefix, short in (
        ("float", "f"),
        ("uint", "u"),
        ("int", "i"),
        ("complex", "c"),
    ):
        if name.startswith(prefix):
            return short + name[len(prefix) :]
    return name


def _is_arraylike(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _scalar_dtype(x: Any) -> np.dtype | None:
    if isinstance(x, bool | int | float | complex | np.generic):
        return np.dtype(jax.dtypes.canonicalize_dtype(np.asarray(x).dtype))
    return None


def _leaf_str(x: Any) -> str:
    """`f32[128,128]` for arrays, `repr` (shortened) for everything else."""
    if _is_arraylike(x):
        return f"{_short_dtype(x.dtype)}[{','.join(map(str, x.shape))}]"
    text = repr(x) if isinstance(x, bool | int | float | complex | str) else None
    if text is None:
        text = getattr(x, "__name__", None) or type(x).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _leaf_stats(x: Any) -> tuple[int, int, bool] | None:
    """(count, bytes, is_inexact) of a numeric leaf; None for non-numeric leaves."""
    if _is_arraylike(x):
        dtype = np.dtype(x.dtype)
        count = int(np.prod(x.shape, dtype=np.int64))
    else:
        dtype = _scalar_dtype(x)
        if dtype is None:
            return None
        count = 1
    inexact = bool(np.issubdtype(dtype, np.inexact))
    return count, count * dtype.itemsize, inexact


def _readable_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.3f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _children(node: Any) -> list[tuple[str, Any, bool]]:
    """Named children of a node: (name, value, is_static)."""
    if isinstance(node, eqx.Module):
        return [
            (f.name, getattr(node, f.name, None), bool(f.metadata.get("static")))
            for f in dataclasses.fields(node)
        ]
    if isinstance(node, list | tuple):
        return [(f"[{i}]", v, False) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return [(f"[{k!r}]", v, False) for k, v in node.items()]
    return []


def _is_container(x: Any) -> bool:
    return isinstance(x, eqx.Module | list | tuple | dict)


def _stats(tree: Any) -> tuple[int, int, int, int]:
    """(count, bytes, inexact count, inexact bytes) of a subtree."""
    count = nbytes = icount = ibytes = 0
    for leaf in jtu.tree_leaves(tree):
        s = _leaf_stats(leaf)
        if s is None:
            continue
        count += s[0]
        nbytes += s[1]
        if s[2]:
            icount += s[0]
            ibytes += s[1]
    return count, nbytes, icount, ibytes


def _table(header: list[str], rows: list[list[list[str]]]) -> str:
    """Box-drawn table; every cell is a list of lines."""
    ncol = len(header)
    widths = [len(h) for h in header]
    for row in rows:
        for j, cell in enumerate(row):
            widths[j] = max([widths[j], *(len(s) for s in cell)])

    def rule(left: str, mid: str, right: str) -> str:
        return left + mid.join("─" * w for w in widths) + right

    def line(cells: list[str]) -> str:
        return "│" + "│".join(c.ljust(w) for c, w in zip(cells, widths)) + "│"

    out = [rule("┌", "┬", "┐"), line(header)]
    for row in rows:
        out.append(rule("├", "┼", "┤"))
        height = max(len(c) for c in row)
        for i in range(height):
            out.append(line([c[i] if i < len(c) else "" for c in row][:ncol]))
    out.append(rule("└", "┴", "┘"))
    return "\n".join(out)


def _config_lines(value: Any, prefix: str = "") -> list[str]:
    if not _is_container(value):
        return [f"{prefix}{_leaf_str(value)}" if prefix else _leaf_str(value)]
    lines = []
    for name, child, static in _children(value):
        if static:
            continue
        key = (
            f"{prefix}{name}"
            if name.startswith("[") or not prefix
            else (f"{prefix}.{name}")
        )
        if child is None:
            continue
        if _is_container(child):
            lines.extend(_config_lines(child, key))
        else:
            lines.append(f"{key}={_leaf_str(child)}")
    return lines


def summary(tree: Any) -> str:
    """Keras-like summary table of a module (or any pytree).

    One row per field of `tree` (a submodule or a leaf group) with its name, type,
    parameter count, size in bytes and the dtype/shape of its leaves; then totals
    for all, inexact (floating/complex) and other leaves.

    **Arguments:**

    - `tree`: an `eqx.Module` (or list/tuple/dict) whose fields are summarised.

    **Returns:**

    The table as a string.

    **Example:**

    ```python
    import jax
    import equinox as eqx
    from eqx_stencil.tree import summary

    model = eqx.nn.MLP(2, 1, width_size=8, depth=1, key=jax.random.PRNGKey(0))
    print(summary(model))  # a row per field (layers: 33 params, ...), then totals
    ```
    """
    rows = []
    for name, child, static in _children(tree) or [("", tree, False)]:
        if static or child is None:
            continue
        count, nbytes, _, _ = _stats(child)
        kind = _leaf_str(child) if _is_arraylike(child) else type(child).__name__
        rows.append(
            [
                [name],
                [kind],
                [f"{count:,}"],
                [_readable_bytes(nbytes)],
                _config_lines(child) or [""],
            ]
        )
    count, nbytes, icount, ibytes = _stats(tree)
    table = _table(["Name", "Type", "Param #", "Size", "Config"], rows)
    width = len(table.splitlines()[0])
    totals = [
        f"Total params :\t{count:,}",
        f"Inexact params:\t{icount:,}",
        f"Other params:\t{count - icount:,}",
        "-" * width,
        f"Total size :\t{_readable_bytes(nbytes)}",
        f"Inexact size:\t{_readable_bytes(ibytes)}",
        f"Other size:\t{_readable_bytes(nbytes - ibytes)}",
        "=" * width,
    ]
    return table + "\n" + "\n".join(totals)


def tree_diagram(tree: Any) -> str:
    """Draw the nested structure of a module, with `name=f32[3,3]` style leaves.

    Static fields are shown with their value and marked `(static)`.

    **Arguments:**

    - `tree`: an `eqx.Module` or any pytree of modules/lists/tuples/dicts.

    **Returns:**

    The diagram as a string.

    **Example:**

    ```python
    import jax
    import equinox as eqx
    from eqx_stencil.tree import tree_diagram

    model = eqx.nn.MLP(2, 1, width_size=8, depth=1, key=jax.random.PRNGKey(0))
    print(tree_diagram(model))
    # MLP
    # ├── layers=tuple
    # │   ├── [0]=Linear
    # │   │   ├── weight=f32[8,2]
    # ...
    ```
    """
    lines = [type(tree).__name__]

    def walk(node: Any, indent: str) -> None:
        kids = _children(node)
        for i, (name, child, static) in enumerate(kids):
            last = i == len(kids) - 1
            branch = "└── " if last else "├── "
            if _is_container(child) and not static:
                lines.append(f"{indent}{branch}{name}={type(child).__name__}")
                walk(child, indent + ("    " if last else "│   "))
            else:
                mark = " (static)" if static else ""
                lines.append(f"{indent}{branch}{name}={_leaf_str(child)}{mark}")

    walk(tree, "")
    return "\n".join(lines)


def tree_mermaid(tree: Any) -> str:
    """Mermaid flowchart of a module's structure (renders on GitHub and in docs).

    **Arguments:**

    - `tree`: an `eqx.Module` or any pytree of modules/lists/tuples/dicts.

    **Returns:**

    A `flowchart LR` Mermaid string; paste it in a ```` ```mermaid ```` block.

    **Example:**

    ```python
    import jax
    import equinox as eqx
    from eqx_stencil.tree import tree_mermaid

    model = eqx.nn.MLP(2, 1, width_size=8, depth=1, key=jax.random.PRNGKey(0))
    print(tree_mermaid(model))
    # flowchart LR
    #     id0["MLP"]
    #     id1["layers: tuple<br>33 params"]
    #     id0 --> id1
    # ...
    ```
    """
    lines = ["flowchart LR", f'    id0["{type(tree).__name__}"]']
    counter = [0]

    def label(text: str) -> str:
        return text.replace('"', "#quot;")

    def walk(node: Any, parent: int) -> None:
        for name, child, static in _children(node):
            counter[0] += 1
            me = counter[0]
            if _is_container(child) and not static:
                count = _stats(child)[0]
                text = f"{name}: {type(child).__name__}<br>{count:,} params"
                lines.append(f'    id{me}["{label(text)}"]')
                lines.append(f"    id{parent} --> id{me}")
                walk(child, me)
            else:
                mark = " (static)" if static else ""
                text = f"{name}: {_leaf_str(child)}{mark}"
                lines.append(f'    id{me}["{label(text)}"]')
                lines.append(f"    id{parent} --- id{me}")

    walk(tree, 0)
    return "\n".join(lines)


@dataclasses.dataclass
class _Call:
    name: str
    kind: str
    inputs: str = ""
    outputs: str = ""
    children: list[_Call] = dataclasses.field(default_factory=list)


def _shapes_str(tree: Any) -> str:
    leaves = [x for x in jtu.tree_leaves(tree) if _is_arraylike(x)]
    return ", ".join(_leaf_str(x) for x in leaves) or "-"


def _render_call(call: _Call) -> list[str]:
    title = f"{call.kind}({call.name})"
    if not call.children:
        io = [[title], ["Input", "Output"], [call.inputs, call.outputs]]
        w0 = len(title) + 2
        w1 = len("Output") + 2
        w2 = max(len(call.inputs), len(call.outputs)) + 2
        blank = " " * w0
        return [
            f"┌{'─' * w0}┬{'─' * w1}┬{'─' * w2}┐",
            f"│{blank}│ {'Input'.ljust(w1 - 1)}│ {call.inputs.ljust(w2 - 1)}│",
            f"│ {io[0][0].ljust(w0 - 1)}│{'─' * w1}┼{'─' * w2}┤",
            f"│{blank}│ {'Output'.ljust(w1 - 1)}│ {call.outputs.ljust(w2 - 1)}│",
            f"└{'─' * w0}┴{'─' * w1}┴{'─' * w2}┘",
        ]
    inner: list[str] = [
        f"Input  {call.inputs}",
        f"Output {call.outputs}",
    ]
    body: list[str] = []
    for child in call.children:
        body.extend(_render_call(child))
    width = max(len(s) for s in [title, *inner, *body])
    out = [f"┌{'─' * width}┐", f"│{title.ljust(width)}│"]
    out.append(f"├{'─' * width}┤")
    out.extend(f"│{s.ljust(width)}│" for s in inner)
    out.append(f"├{'─' * width}┤")
    out.extend(f"│{s.ljust(width)}│" for s in body)
    out.append(f"└{'─' * width}┘")
    return out


def tree_box(model: Callable[..., Any], *inputs: Any, **kwargs: Any) -> str:
    """Boxes showing every submodule call's input and output shapes.

    The model is traced once with `jax.eval_shape` (no FLOPs are spent) on a
    recording copy of itself: each callable submodule in the copy is an
    instance of a throwaway subclass of its class whose `__call__` records its
    inputs and outputs. The user's classes and `model` are left untouched, so
    this is safe to call from several threads. A submodule called twice shows
    up twice.

    **Arguments:**

    - `model`: a callable `eqx.Module`.
    - `*inputs`, `**kwargs`: the call's arguments (arrays or
        `jax.ShapeDtypeStruct`s).

    **Returns:**

    The nested boxes as a string.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax
    import equinox as eqx
    from eqx_stencil.tree import tree_box

    model = eqx.nn.MLP(2, 1, width_size=8, depth=1, key=jax.random.PRNGKey(0))
    print(tree_box(model, jnp.ones(2)))
    # ┌───────────────────────────────────────┐
    # │MLP(Parent)                            │ ...
    # │││ Linear(layers[0]) │────────┼────────┤│ ...
    ```
    """
    if not callable(model):
        raise TypeError(f"`tree_box`: `model` must be callable; got {model!r}.")
    root = _Call(name="Parent", kind=type(model).__name__)
    stack = [root]
    recording = _recording_copy(model, "", stack)

    def run(*args: Any, **kw: Any) -> Any:
        root.inputs = _shapes_str((args, kw))
        out = recording(*args, **kw)
        root.outputs = _shapes_str(out)
        return out

    jax.eval_shape(run, *inputs, **kwargs)
    lines = ["# using jax.eval_shape (no-flops operation)", *_render_call(root)]
    return "\n".join(lines)


def _recording_copy(node: Any, path: str, stack: list[_Call]) -> Any:
    """A copy of `node` whose (non-root) submodule calls append to `stack[-1]`."""
    if isinstance(node, list | tuple):
        items = [
            _recording_copy(child, f"{path}{name}", stack)
            for name, child, _ in _children(node)
        ]
        if isinstance(node, list):
            return items
        return type(node)(*items) if hasattr(node, "_fields") else type(node)(items)
    if isinstance(node, dict):
        return {
            key: _recording_copy(child, f"{path}[{key!r}]", stack)
            for key, child in node.items()
        }
    if not isinstance(node, eqx.Module):
        return node
    values = dict(node.__dict__)
    for name, child, static in _children(node):
        if not static and _is_container(child):
            sep = "" if not path else "."
            values[name] = _recording_copy(child, f"{path}{sep}{name}", stack)
    cls = type(node)
    if path and callable(node):
        cls = _recording_class(cls, path, stack)
    copy = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(copy, name, value)
    return copy


def _recording_class(cls: type, path: str, stack: list[_Call]) -> type:
    """A subclass of `cls` whose `__call__` records one box per call at `stack`."""

    def __call__(self: Any, *args: Any, **kw: Any) -> Any:
        call = _Call(name=path, kind=cls.__name__, inputs=_shapes_str((args, kw)))
        stack[-1].children.append(call)
        stack.append(call)
        try:
            out = cls.__call__(self, *args, **kw)
        finally:
            stack.pop()
        call.outputs = _shapes_str(out)
        return out

    namespace = {
        "__call__": __call__,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
    }
    return type(cls)(cls.__name__, (cls,), namespace)


class TreeViz:
    """Mixin for `eqx.Module` adding `summary`, `tree_diagram`, `tree_box` and
    `tree_mermaid` as methods.

    !!! Example

        ```python
        import jax
        import equinox as eqx
        from eqx_stencil.tree import TreeViz


        class Affine(TreeViz, eqx.Module):
            weight: jax.Array
            bias: jax.Array


        model = Affine(jax.numpy.ones((3, 2)), jax.numpy.zeros(3))
        print(model.summary())  # weight f32[3,2], bias f32[3]: 9 params
        print(model.tree_diagram())
        ```
    """

    def summary(self) -> str:
        """See [`eqx_stencil.tree.summary`][]."""
        return summary(self)

    def tree_diagram(self) -> str:
        """See [`eqx_stencil.tree.tree_diagram`][]."""
        return tree_diagram(self)

    def tree_box(self, *inputs: Any, **kwargs: Any) -> str:
        """See [`eqx_stencil.tree.tree_box`][]."""
        return tree_box(cast(Callable[..., Any], self), *inputs, **kwargs)

    def tree_mermaid(self) -> str:
        """See [`eqx_stencil.tree.tree_mermaid`][]."""
        return tree_mermaid(self)
