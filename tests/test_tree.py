"""Tests for `eqx_stencil.tree`: the kernex README `treeclass` examples and more."""

from __future__ import annotations

import inspect
import re
import threading
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqx_stencil.tree import (
    TreeMath,
    TreeViz,
    static_field,
    summary,
    tree_box,
    tree_diagram,
    tree_mermaid,
    treeclass,
)


@treeclass
class Linear:
    weight: jnp.ndarray
    bias: jnp.ndarray

    def __init__(self, key, in_dim, out_dim):
        self.weight = jax.random.normal(key, shape=(in_dim, out_dim)) * jnp.sqrt(
            2 / in_dim
        )
        self.bias = jnp.ones((1, out_dim))

    def __call__(self, x):
        return x @ self.weight + self.bias


@treeclass
class StackedLinear:
    l1: Linear
    l2: Linear
    l3: Linear

    def __init__(self, key, in_dim, out_dim):
        keys = jax.random.split(key, 3)
        self.l1 = Linear(key=keys[0], in_dim=in_dim, out_dim=128)
        self.l2 = Linear(key=keys[1], in_dim=128, out_dim=128)
        self.l3 = Linear(key=keys[2], in_dim=128, out_dim=out_dim)

    def __call__(self, x):
        x = self.l1(x)
        x = jax.nn.tanh(x)
        x = self.l2(x)
        x = jax.nn.tanh(x)
        x = self.l3(x)
        return x


@treeclass
class Test:
    a: float
    b: float
    c: float
    name: str = static_field()  # ignore from jax computations

    __test__ = False  # not a pytest test class


@pytest.fixture(scope="module")
def data():
    # NumPy data: no eager program per primitive.
    x = np.linspace(0, 1, 100, dtype=np.float32)[:, None]
    noise = np.random.default_rng(0).uniform(size=(100, 1)).astype(np.float32)
    return x, x**3 + noise * 0.01


@pytest.fixture(scope="module")
def model():
    # Built in one program (models are immutable, so one per module is shared).
    return jax.jit(lambda key: StackedLinear(in_dim=1, out_dim=1, key=key))(
        jax.random.PRNGKey(0)
    )


def loss_func(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def test_readme_regression_training_reduces_loss(model, data):
    x, y = data

    @jax.jit
    def update(model, x, y):
        value, grads = jax.value_and_grad(loss_func)(model, x, y)
        # no need for `jax.tree_util.tree_map`: the model supports arithmetic
        return value, model - 1e-3 * grads

    # The 200 steps and both losses in one program.
    @jax.jit
    def train(model):
        initial = loss_func(model, x, y)
        model = jax.lax.fori_loop(0, 200, lambda _, m: update(m, x, y)[1], model)
        return initial, loss_func(model, x, y), model, model(x)

    initial, final, model, out = train(model)
    assert isinstance(model, StackedLinear)
    assert final < 0.1 * initial
    assert out.shape == (100, 1)


def test_treeclass_is_equinox_module(model):
    assert isinstance(model, eqx.Module)
    assert isinstance(model, TreeMath) and isinstance(model, TreeViz)
    assert StackedLinear.__name__ == "StackedLinear"
    assert len(jax.tree_util.tree_leaves(model)) == 6


def test_readme_summary(model):
    text = summary(model)
    assert text == model.summary()
    for figure in [
        "256",
        "16,512",
        "129",
        "16,897",
        "1.000 KB",
        "64.500 KB",
        "516.000 B",
        "66.004 KB",
        "weight=f32[1,128]",
        "weight=f32[128,128]",
        "weight=f32[128,1]",
        "bias=f32[1,128]",
        "bias=f32[1,1]",
        "Linear",
        "l1",
        "l2",
        "l3",
    ]:
        assert figure in text, figure
    assert "Total params :\t16,897" in text
    assert "Inexact params:\t16,897" in text
    assert "Other params:\t0" in text
    assert "Total size :\t66.004 KB" in text
    assert "Other size:\t0.000 B" in text
    assert text.splitlines()[0].startswith("┌")


def test_docs_page_prints_what_the_code_prints():
    """docs/tree.md shows the summary and boxes of its model: they are exact."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "tree.md").read_text()
    printed = re.search(r"\nprints\n\n```\n(.*?)```", page, re.S)
    assert printed is not None
    namespace: dict = {}
    code = re.search(r"```python\n(.*?)```", page, re.S)
    assert code is not None
    setup = code.group(1).replace(
        "print(model.summary())\nprint(model.tree_box(x))", ""
    )

    def run():
        exec(setup, namespace)
        return namespace["model"], namespace["x"]

    # The page's code, verbatim, traced into one program instead of one eager
    # program per primitive.
    model, x = jax.jit(run)()
    assert printed.group(1) == model.summary() + "\n" + model.tree_box(x) + "\n"


def test_tree_box_leaves_classes_alone_and_runs_in_threads(model):
    """No class is patched while tracing, so concurrent calls do not interfere."""
    linear_call = Linear.__dict__["__call__"]
    results: dict[int, str] = {}

    def draw(n: int) -> None:
        results[n] = tree_box(model, jax.ShapeDtypeStruct((n, 1), jnp.float32))

    threads = [threading.Thread(target=draw, args=(n,)) for n in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n, text in results.items():
        assert text.count(f"f32[{n},128]") == 4, text
        assert text.count(f"f32[{n},1]") == 4, text  # model in/out, l1 in, l3 out
    assert len(results) == 6
    assert Linear.__dict__["__call__"] is linear_call
    assert type(model.l1) is Linear and type(model) is StackedLinear


def test_tree_box_records_repeated_and_nested_calls():
    class Twice(TreeViz, eqx.Module):
        inner: eqx.nn.Linear
        layers: tuple

        def __call__(self, x):
            return self.layers[1](self.inner(self.inner(x)))

    # Built in one program, not one per initialiser primitive.
    model = jax.jit(
        lambda key: Twice(
            eqx.nn.Linear(3, 3, key=key), (None, eqx.nn.Linear(3, 2, key=key))
        )
    )(jax.random.PRNGKey(0))
    text = model.tree_box(jnp.ones(3))
    assert text.count("Linear(inner)") == 2
    assert text.count("Linear(layers[1])") == 1
    assert "Twice(Parent)" in text and "Output f32[2]" in text


def test_readme_tree_box(model, data):
    x, _ = data
    text = tree_box(model, x)
    assert text == model.tree_box(x)
    assert "StackedLinear(Parent)" in text
    for name in ("Linear(l1)", "Linear(l2)", "Linear(l3)"):
        assert name in text
    assert text.count("f32[100,1]") >= 3  # model in, model out, l1 in, l3 out
    assert text.count("f32[100,128]") == 4  # l1 out, l2 in/out, l3 in
    # l1's box: input f32[100,1] then output f32[100,128]
    lines = text.splitlines()
    i = next(k for k, s in enumerate(lines) if "Linear(l1)" in s)
    assert "f32[100,1]" in lines[i - 1] and "f32[100,128]" in lines[i + 1]
    # shapes only: works with abstract inputs too, and __call__ is restored
    assert (
        tree_box(model, jax.ShapeDtypeStruct((7, 1), jnp.float32)).count("f32[7,128]")
        == 4
    )
    assert Linear.__call__.__name__ == "__call__"
    assert "__call__" not in TreeMath.__dict__


def test_readme_tree_diagram(model):
    text = tree_diagram(model)
    assert text == model.tree_diagram()
    assert text.splitlines()[0] == "StackedLinear"
    for line in [
        "├── l1=Linear",
        "│   ├── weight=f32[1,128]",
        "│   └── bias=f32[1,128]",
        "├── l2=Linear",
        "│   ├── weight=f32[128,128]",
        "└── l3=Linear",
        "    ├── weight=f32[128,1]",
        "    └── bias=f32[1,1]",
    ]:
        assert line in text.splitlines(), line


def test_tree_mermaid(model):
    text = tree_mermaid(model)
    assert text == model.tree_mermaid()
    assert text.startswith("flowchart LR")
    for figure in ["StackedLinear", "l1: Linear", "256 params", "16,512 params"]:
        assert figure in text
    assert "weight: f32[128,128]" in text
    assert text.count("-->") == 3 and text.count("---") == 6


def test_viz_static_and_other_leaves():
    t = Test(jnp.arange(3), 2.0, None, "A")
    text = summary(t)
    assert "Other params:\t3" in text and "Inexact params:\t1" in text
    assert "Total params :\t4" in text
    assert "│i32[3]" in text and "│float" in text
    diagram = tree_diagram(t)
    assert "a=i32[3]" in diagram and "c=None" in diagram
    assert "name='A' (static)" in diagram
    assert "name: 'A' (static)" in tree_mermaid(t)


def test_readme_math_examples():
    A = Test(10, 20, 30, "A")
    assert (A + A) == Test(20, 40, 60, "A")
    assert (A - A) == Test(0, 0, 0, "A")
    assert (A * A).reduce_mean() == 1400
    assert (A + 1) == Test(11, 21, 31, "A")

    # only add 1 to field `a`; other fields are None
    assert (A["a"] + 1) == Test(11, None, None, "A")

    Aa = A["a"] + 10  # Test(a=20,b=None,c=None,name=A)
    Ab = A["b"] + 10  # Test(a=None,b=30,c=None,name=A)
    assert (Aa | Ab | A) == Test(20, 30, 30, "A")

    assert A[A > 10] == Test(a=None, b=20, c=30, name="A")


def test_readme_register_op():
    B = Test([10, 10], 20, 30, "B")
    B.register_op(func=lambda node: node + 1, name="plus_one")
    assert B.plus_one() == Test(a=[11, 11], b=21, c=31, name="B")

    C = Test(jnp.array([10, 10]), 20, 30, "C")
    C.register_op(
        func=jnp.prod,
        name="product",
        reduce_op=lambda x, y: x * y,
        init_val=1,
    )
    assert C.product() == Test(a=100, b=20, c=30, name="C")
    assert C.reduce_product() == 60000


def test_failing_equality():
    A = Test(10, 20, 30, "A")
    assert not (A == Test(10, 20, 31, "A"))
    assert not ((A + A) == Test(20, 40, 61, "A"))
    # `!=` is a leafwise mask too: only leaf `c` differs, so not all-True
    differs = A != Test(10, 20, 31, "A")
    assert (differs.a, differs.b, differs.c) == (False, False, True)
    assert not differs
    assert not (A != A)
    # differing static field: never equal
    assert not (A == Test(10, 20, 30, "B"))
    assert A != Test(10, 20, 30, "B")
    # None against a value
    assert not (A["a"] == A)
    with pytest.raises(AssertionError):
        assert (A + A) == Test(20, 40, 61, "A")


def test_comparisons_return_masks():
    A = Test(10, 20, 30, "A")
    for mask, expected in [
        (A > 10, (False, True, True)),
        (A >= 20, (False, True, True)),
        (A < 20, (True, False, False)),
        (A <= 20, (True, True, False)),
        (A == 20, (False, True, False)),
        (A != 20, (True, False, True)),
    ]:
        assert type(mask) is Test and mask.name == "A"
        assert (mask.a, mask.b, mask.c) == expected
    arr = Test(jnp.array([1.0, 2.0]), jnp.array(3.0), 4.0, "x")
    assert bool(arr > 0)
    assert not bool(arr > 1)


@pytest.mark.parametrize(
    "op, expected",
    [
        (lambda A, B: A + B, (12, 24, 36)),
        (lambda A, B: A - B, (8, 16, 24)),
        (lambda A, B: A * B, (20, 80, 180)),
        (lambda A, B: A / B, (5.0, 5.0, 5.0)),
        (lambda A, B: A // 3, (3, 6, 10)),
        (lambda A, B: A % 3, (1, 2, 0)),
        (lambda A, B: A**2, (100, 400, 900)),
        (lambda A, B: 2**B, (4, 16, 64)),
        (lambda A, B: 100 - A, (90, 80, 70)),
        (lambda A, B: 60 / A, (6.0, 3.0, 2.0)),
        (lambda A, B: 65 // A, (6, 3, 2)),
        (lambda A, B: 65 % A, (5, 5, 5)),
        (lambda A, B: -A, (-10, -20, -30)),
        (lambda A, B: +A, (10, 20, 30)),
        (lambda A, B: abs(-A), (10, 20, 30)),
        (lambda A, B: 2 * A + 1, (21, 41, 61)),
    ],
)
def test_operators(op, expected):
    A = Test(10, 20, 30, "A")
    B = Test(2, 4, 6, "A")
    out = op(A, B)
    assert type(out) is Test and out.name == "A"
    assert (out.a, out.b, out.c) == expected
    assert out == Test(*expected, "A")


def test_array_leaves_and_static_untouched():
    A = Test(jnp.arange(3.0), jnp.ones((2, 2)), 1.0, "A")
    out = jax.jit(lambda A: (A * 2 + 1) ** 2)(A)  # one program, not one per op
    np.testing.assert_allclose(out.a, (np.arange(3.0) * 2 + 1) ** 2)
    np.testing.assert_allclose(out.b, np.full((2, 2), 9.0))
    assert out.c == 9.0 and out.name == "A"
    assert out == Test((jnp.arange(3.0) * 2 + 1) ** 2, jnp.full((2, 2), 9.0), 9.0, "A")


def test_structure_mismatch_errors():
    A = Test(10, 20, 30, "A")
    with pytest.raises(TypeError, match="same structure"):
        A + Test(1, 2, 3, "B")
    with pytest.raises(TypeError, match="same structure"):
        A | Test(1, 2, 3, "B")
    with pytest.raises(KeyError, match="unknown field"):
        A["zzz"]
    with pytest.raises(TypeError, match="field name"):
        A[0]


def test_none_propagation():
    A = Test(10, None, 30, "A")
    for out in [A + 1, A - A, A * A, A / 2, A // 2, A % 7, A**2, -A, +A, abs(A)]:
        assert out.b is None
        assert out.a is not None and out.c is not None
    mask = A > 0
    assert mask.b is None and bool(mask)
    assert A[A > 10] == Test(None, None, 30, "A")
    assert (A | Test(1, 2, 3, "A")) == Test(10, 2, 30, "A")
    assert A.reduce_sum() == 40
    assert A.reduce_max() == 30 and A.reduce_min() == 10
    assert A.reduce_prod() == 300
    assert A.at[A > 0].set(0) == Test(0, None, 0, "A")
    A.register_op(lambda x: x * 10, "times_ten")
    assert A.times_ten() == Test(100, None, 300, "A")


def test_selection_multiple_fields():
    A = Test(10, 20, 30, "A")
    assert A[["a", "c"]] == Test(10, None, 30, "A")
    assert A["b"].reduce_sum() == 20


def test_reductions_arrays():
    A = Test(jnp.array([1.0, 2.0]), jnp.array([[3.0, 4.0]]), 5.0, "A")
    # The five reductions in one program (eagerly, one per primitive and shape).
    reductions = jax.jit(
        lambda A: (
            A.reduce_sum(),
            A.reduce_mean(),
            A.reduce_max(),
            A.reduce_min(),
            A.reduce_prod(),
        )
    )(A)
    assert reductions == (15.0, 1.5 + 3.5 + 5.0, 5.0, 1.0, 120.0)


def test_at_set_and_apply_elementwise():
    A = Test(jnp.array([1.0, 20.0, 3.0]), jnp.array(30.0), 5, "A")
    out = A.at[A > 10].set(0.0)
    np.testing.assert_allclose(out.a, [1.0, 0.0, 3.0])
    assert out.b == 0.0 and out.c == 5
    out = A.at[A > 10].apply(lambda x: -x)
    np.testing.assert_allclose(out.a, [1.0, -20.0, 3.0])
    assert out.b == -30.0 and out.c == 5
    # tree of values
    out = A.at[A > 2].set(Test(jnp.zeros(3), 1.0, 7, "A"))
    np.testing.assert_allclose(out.a, [1.0, 0.0, 0.0])
    assert out.b == 1.0 and out.c == 7
    # the original is unchanged
    np.testing.assert_allclose(A.a, [1.0, 20.0, 3.0])


def test_mask_indexing_needs_scalar_masks():
    A = Test(jnp.array([1.0, 20.0]), 2.0, 3.0, "A")
    with pytest.raises(TypeError, match="at\\[mask\\]"):
        A[A > 10]


def test_bool_on_traced_mask_raises():
    A = Test(jnp.array(1.0), jnp.array(2.0), jnp.array(3.0), "A")

    @jax.jit
    def f(t):
        if t > 0:
            return 1.0
        return 0.0

    with pytest.raises(TypeError, match="traced"):
        f(A)


def test_register_op_is_a_class_method():
    @treeclass
    class R:
        x: jax.Array

    assert isinstance(inspect.getattr_static(TreeMath, "register_op"), classmethod)
    R.register_op(jnp.sum, "total", reduce_op=lambda a, b: a * b, init_val=2.0)
    r = R(jnp.array([1.0, 2.0, 4.0]))
    assert float(r.total().x) == 7.0
    assert float(r.reduce_total()) == 14.0


def test_registered_ops_do_not_leak_between_classes():
    @treeclass
    class P:
        x: float

    @treeclass
    class Q:
        x: float

    P(1.0).register_op(lambda v: v + 1, "inc", reduce_op=lambda a, b: a + b, init_val=0)
    Q(1.0).register_op(lambda v: v * 3, "triple")
    assert P(1.0).inc() == P(2.0)
    assert P(1.0).reduce_inc() == 2.0
    assert Q(2.0).triple() == Q(6.0)
    with pytest.raises(AttributeError):
        Q(1.0).inc()
    with pytest.raises(AttributeError):
        P(1.0).triple()
    with pytest.raises(AttributeError):
        Q(1.0).reduce_triple()  # no reduce_op registered
    with pytest.raises(AttributeError):
        Test(1, 2, 3, "A").inc()
    with pytest.raises(ValueError, match="identifier"):
        P(1.0).register_op(lambda v: v, "not a name")


class MLP(TreeMath, TreeViz, eqx.Module):
    layers: list
    activation: str = eqx.field(static=True, default="tanh")

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.layers = [eqx.nn.Linear(2, 8, key=k1), eqx.nn.Linear(8, 1, key=k2)]

    def __call__(self, x):
        x = jax.nn.tanh(self.layers[0](x))
        return self.layers[1](x)


def test_mixins_on_equinox_module():
    mlp = jax.jit(MLP)(jax.random.PRNGKey(1))  # one program, not one per init
    doubled = jax.jit(lambda m: m * 2)(mlp)  # one program for every leaf
    assert isinstance(doubled, MLP)
    np.testing.assert_allclose(doubled.layers[0].weight, 2 * mlp.layers[0].weight)
    assert mlp == mlp
    assert not (mlp == doubled)
    text = mlp.summary()
    assert "33" in text and "list" in text  # 2*8+8 + 8*1+1 = 33 params
    assert "[0].weight=f32[8,2]" in text
    box = mlp.tree_box(jnp.ones(2))
    assert "Linear(layers[0])" in box and "Linear(layers[1])" in box
    assert "f32[8]" in box
    assert "layers=list" in mlp.tree_diagram()


def test_jit_grad_vmap_and_equinox_tools(model, data):
    x, y = data
    # Both gradients in one program.
    grads, g2 = jax.jit(
        lambda m: (
            jax.grad(loss_func)(m, x, y),
            eqx.filter_grad(lambda m: loss_func(m, x, y))(m),
        )
    )(model)
    assert isinstance(grads, StackedLinear)
    step = eqx.filter_jit(lambda m, g: m - 1e-3 * g)
    new = step(model, grads)
    assert isinstance(new, StackedLinear)
    assert not (new == model)
    assert bool(jax.jit(lambda a, b: (a - b).reduce_sum())(new, model) != 0)

    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda a, b: bool(np.allclose(a, b)), grads, g2)
    )

    batched = jax.jit(jax.vmap(lambda s: (model * s).reduce_sum()))(np.arange(3.0))
    total = sum(np.sum(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(model))
    np.testing.assert_allclose(batched, np.arange(3.0) * total, rtol=1e-5)

    mask = jax.jit(lambda m: m > 0)(model)
    assert isinstance(mask, StackedLinear)
    assert mask.l1.bias.dtype == jnp.bool_

    swapped = eqx.tree_at(lambda m: m.l1.bias, model, jnp.zeros((1, 128)))
    assert isinstance(swapped, StackedLinear)
    assert float(swapped.l1.bias.sum()) == 0.0
    assert "StackedLinear(" in repr(model) and "f32[128,128]" in repr(model)
    assert "Test(a=10, b=20, c=30, name='A')" == repr(Test(10, 20, 30, "A"))


def test_hash_and_static_jit():
    A = Test(1, 2, 3, "A")
    assert hash(A) == hash(Test(1, 2, 3, "A"))
    f = jax.jit(lambda t: t.a + t.b, static_argnums=0)
    assert f(A) == 3


def test_treeclass_without_init_and_defaults():
    @treeclass
    class WithDefault:
        w: jnp.ndarray
        scale: float = 2.0
        tag: str = static_field(default="t")

    obj = WithDefault(jnp.ones(2))
    assert obj.scale == 2.0 and obj.tag == "t"
    assert (obj * 3).scale == 6.0
    with pytest.raises(TypeError, match="class"):
        treeclass(lambda: None)  # type: ignore[arg-type]
