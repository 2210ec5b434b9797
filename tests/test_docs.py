"""Every code snippet of the docs runs: the README, each page under `docs/`,
and the examples in the public docstrings (which the API reference renders).

The ```python blocks of one page run in order in one namespace. A python
block followed by a ```text block reading `SomeError: message` must raise
exactly that error with exactly that message (the errors page).
"""

import importlib
import inspect
import re
import textwrap
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
ERROR = re.compile(r"^(\w+(?:Error|Exception)): (.*)$")
PUBLIC_MODULES = (
    "eqx_stencil",
    "eqx_stencil.tree",
    "eqx_stencil.nn",
    "eqx_stencil.kernex",
)


def snippets(text: str) -> list[tuple[str, str | None]]:
    """The python blocks of `text`, each with the error line it must raise."""
    blocks = BLOCK.findall(text)
    out = []
    for i, (language, code) in enumerate(blocks):
        if language != "python":
            continue
        expected = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "text":
            first = blocks[i + 1][1].strip().splitlines()[0]
            if ERROR.match(first):
                expected = first
        out.append((textwrap.dedent(code), expected))
    return out


def run(code: str, expected: str | None, namespace: dict, where: str) -> None:
    if expected is None:
        exec(compile(code, where, "exec"), namespace)
        return
    with pytest.raises(Exception) as info:
        exec(compile(code, where, "exec"), namespace)
    found = f"{type(info.value).__name__}: {str(info.value).splitlines()[0]}"
    assert found == expected, (
        f"{where}: the docs say\n{expected}\nthe code says\n{found}"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_snippets_run(page: Path):
    namespace: dict = {"__name__": "__docs__"}
    found = snippets(page.read_text())
    for number, (code, expected) in enumerate(found):
        run(code, expected, namespace, f"{page.name} block {number}")


def test_errors_page_checks_messages():
    """The runner above really compares the messages of the errors page."""
    found = snippets((ROOT / "docs" / "errors.md").read_text())
    assert sum(expected is not None for _, expected in found) >= 10


def public_docstrings() -> list[tuple[str, str, str]]:
    """`(module, where, docstring)` of every public callable and its methods
    whose docstring has an example."""
    out = []
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if attr.startswith("_") or not callable(obj):
                continue
            if not getattr(obj, "__module__", "").startswith(name):
                continue  # imported from elsewhere
            docs = [(f"{name}.{attr}", inspect.getdoc(obj) or "")]
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    if callable(value) or isinstance(value, property):
                        doc = inspect.getdoc(value) or ""
                        docs.append((f"{name}.{attr}.{member}", doc))
            out += [(name, where, doc) for where, doc in docs if "```python" in doc]
    return out


@pytest.mark.parametrize(
    "module,where,doc", public_docstrings(), ids=lambda v: str(v)[:60]
)
def test_docstring_examples_run(module: str, where: str, doc: str):
    # As in doctest, an example sees the names of its module.
    namespace = {**vars(importlib.import_module(module)), "__name__": "__docs__"}
    for number, (code, expected) in enumerate(snippets(doc)):
        run(code, expected, namespace, f"{where} example {number}")


def test_every_public_callable_has_an_example():
    documented = {where for _, where, _ in public_docstrings()}
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in dir(module):
            obj = getattr(module, attr)
            if attr.startswith("_") or not callable(obj):
                continue
            if getattr(obj, "__module__", "").startswith(name):
                assert f"{name}.{attr}" in documented, f"{name}.{attr} has no example"
