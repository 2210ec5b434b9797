"""The `kmap` examples of the kernex README, with the values it prints.

Expected values are the README's own printed output, `lax` primitives, or the
NumPy reference.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from reference import reference_kmap

import eqx_stencil as es


def test_laplacian_of_ones_is_zero():
    @es.kmap(kernel_size=(3, 3), padding="valid", relative=True)
    def laplacian(x):
        return (
            0 * x[1, -1] + 1 * x[1, 0] + 0 * x[1, 1]
            + 1 * x[0, -1] + -4 * x[0, 0] + 1 * x[0, 1]
            + 0 * x[-1, -1] + 1 * x[-1, 0] + 0 * x[-1, 1]
        )  # fmt: skip

    out = laplacian(jnp.ones([10, 10]))
    assert out.shape == (8, 8)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, np.zeros((8, 8), np.float32))


def test_laplacian_on_a_quadratic_is_constant():
    """Not in the README, but the same stencil must differentiate: u = i^2 + j^2."""

    @es.kmap(kernel_size=(3, 3), padding="valid", relative=True)
    def laplacian(x):
        return x[1, 0] + x[-1, 0] + x[0, 1] + x[0, -1] - 4 * x[0, 0]

    i, j = np.meshgrid(np.arange(6.0), np.arange(7.0), indexing="ij")
    out = laplacian(jnp.asarray(i**2 + j**2, jnp.float32))
    np.testing.assert_allclose(out, np.full((4, 5), 4.0))


def test_identity_relative_returns_center():
    @es.kmap(kernel_size=(3, 3), relative=True)
    def identity(x):
        return x[0, 0]

    mat = jnp.arange(1, 26).reshape(5, 5)
    np.testing.assert_array_equal(identity(mat), np.asarray(mat)[1:-1, 1:-1])


def test_get_3x3_patches():
    @jax.jit
    @es.kmap(kernel_size=(3, 3), padding="same")
    def get_3x3_patches(x):
        return x

    mat = jnp.arange(1, 26).reshape(5, 5)
    patches = get_3x3_patches(mat)
    assert patches.shape == (5, 5, 3, 3)
    np.testing.assert_array_equal(patches[0, 0], [[0, 0, 0], [0, 1, 2], [0, 6, 7]])
    np.testing.assert_array_equal(
        patches[2, 3], [[8, 9, 10], [13, 14, 15], [18, 19, 20]]
    )
    np.testing.assert_array_equal(patches[4, 4], [[19, 20, 0], [24, 25, 0], [0, 0, 0]])


def test_moving_average():
    @es.kmap(kernel_size=(3,))
    def moving_average(x):
        return jnp.mean(x)

    out = moving_average(jnp.array([1, 2, 3, 7, 9]))
    np.testing.assert_allclose(out, [2.0, 4.0, 6.3333335], rtol=1e-6)
    assert out.dtype == jnp.float32


def test_conv2d_matches_lax_conv():
    @jax.jit
    @es.kmap(kernel_size=(3, 3, 3), padding=("valid", "same", "same"))
    def kernex_conv2d(x, w):
        return jnp.sum(x * w)

    @jax.jit
    def jax_conv2d(x, w):
        return lax.conv_general_dilated(
            lhs=x,
            rhs=w,
            window_strides=(1, 1),
            padding="SAME",
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        )[0]

    rng = np.random.default_rng(0)
    C, H, W = 3, 9, 8
    x = rng.normal(size=(C, H, W)).astype(np.float32)
    w = rng.normal(size=(C, 3, 3)).astype(np.float32)
    # Both in one program (one compile): the jitted functions inline.
    out, expected = jax.jit(
        lambda x, w: (kernex_conv2d(x, w), jax_conv2d(x[None], w[None]))
    )(x, w)
    assert out.shape == (1, H, W)
    np.testing.assert_allclose(out, expected, atol=1e-4)


class MaxPool2D(eqx.Module):
    kernel_size: tuple[int, ...] | int = eqx.field(static=True)
    strides: tuple[int, ...] | int = eqx.field(static=True)
    padding: tuple[int, ...] | int | str = eqx.field(static=True)

    def __init__(self, *, kernel_size=(2, 2), strides=2, padding="valid"):
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding

    def __call__(self, x):
        @jax.vmap  # batch
        @jax.vmap  # channels
        @es.kmap(
            kernel_size=self.kernel_size, strides=self.strides, padding=self.padding
        )
        def _maxpool2d(x):
            return jnp.max(x)

        return _maxpool2d(x)


def test_maxpool2d():
    layer = MaxPool2D(kernel_size=(2, 2), strides=(2, 2), padding="same")
    array = jnp.arange(1, 26).reshape(1, 1, 5, 5)
    out = layer(array)
    np.testing.assert_array_equal(out, [[[[7, 9, 10], [17, 19, 20], [22, 24, 25]]]])
    assert jnp.issubdtype(out.dtype, jnp.integer)


def test_maxpool2d_matches_reduce_window():
    layer = MaxPool2D(kernel_size=(3, 2), strides=(2, 1), padding="valid")
    x = np.random.default_rng(1).normal(size=(2, 3, 7, 6)).astype(np.float32)

    @jax.jit
    def both(x):
        expected = lax.reduce_window(
            x, -jnp.inf, lax.max, (1, 1, 3, 2), (1, 1, 2, 1), "VALID"
        )
        return layer(x), expected

    out, expected = both(x)
    np.testing.assert_array_equal(out, expected)


class AverageBlurLayer(eqx.Module):
    """Channels first, as in the README."""

    in_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, x):
        @jax.vmap  # batch
        @jax.vmap  # channels
        @es.kmap(kernel_size=(*self.kernel_size,), padding="same")
        def average_blur(x):
            kernel = jnp.ones([*self.kernel_size]) / jnp.array(self.kernel_size).prod()
            return jnp.sum(x * kernel, dtype=jnp.float32)

        return average_blur(x).astype(jnp.uint8)


def _synthetic_image(shape):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=shape).astype(np.uint8)


def test_average_blur_layer():
    # A 2x2 mean is exact in float32, so the uint8 truncation is exact too.
    image = _synthetic_image((1, 3, 9, 11))  # batch, channel, H, W
    layer = jax.jit(AverageBlurLayer(in_channels=3, kernel_size=(2, 2)))
    out = layer(jnp.asarray(image))
    assert out.shape == image.shape and out.dtype == jnp.uint8
    expected = np.stack(
        [
            reference_kmap(
                lambda w: np.sum(w, dtype=np.int64) // 4, c, 2, padding="same"
            )
            for c in image[0]
        ]
    )[None]
    np.testing.assert_array_equal(out, expected)


def test_average_blur_float_matches_reference():
    image = _synthetic_image((1, 2, 8, 7)).astype(np.float32)
    blur = jax.vmap(
        jax.vmap(es.kmap(lambda w: jnp.sum(w / 25.0), kernel_size=5, padding="same"))
    )
    out = jax.jit(blur)(image)
    expected = np.stack(
        [
            np.stack(
                [
                    reference_kmap(lambda w: np.mean(w), c, 5, padding="same")
                    for c in img
                ]
            )
            for img in image
        ]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)


class Conv2D(eqx.Module):
    """The README's Conv2D layer (weights OIHW, bias per output channel)."""

    weight: jax.Array
    bias: jax.Array
    in_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] | int = eqx.field(static=True)
    padding: tuple = eqx.field(static=True)

    def __init__(self, *, in_channels, out_channels, kernel_size, strides=1, key):
        self.weight = jax.random.normal(key, (out_channels, in_channels, *kernel_size))
        self.bias = jnp.arange(out_channels, dtype=jnp.float32).reshape(-1, 1, 1)
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = ("valid", "same", "same")

    def __call__(self, x):
        conv = es.kmap(
            lambda x, w: jnp.sum(x * w),
            kernel_size=(self.in_channels, *self.kernel_size),
            strides=self.strides,
            padding=self.padding,
        )

        @jax.vmap  # batch
        def fwd_image(image):
            return jax.vmap(lambda w: conv(image, w))(self.weight)[:, 0] + self.bias

        return fwd_image(x)


def test_conv2d_layer_matches_lax_conv():
    layer = Conv2D(
        in_channels=2, out_channels=3, kernel_size=(3, 3), key=jax.random.key(2)
    )
    x = np.random.default_rng(2).normal(size=(2, 2, 6, 7)).astype(np.float32)

    @eqx.filter_jit
    def both(layer, x):  # one program: one compile
        expected = (
            lax.conv_general_dilated(
                x,
                layer.weight,
                (1, 1),
                "SAME",
                dimension_numbers=("NCHW", "OIHW", "NCHW"),
            )
            + layer.bias
        )
        return layer(x), expected

    out, expected = both(layer, x)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_get_patches_1d_matches_lax_patches():
    @jax.jit
    @es.kmap(kernel_size=(3,), padding="same")
    def get_patches(x):
        return x

    @jax.jit
    def jax_get_patches(x):
        return lax.conv_general_dilated_patches(x, (3,), (1,), padding="same")

    n = 40
    x = np.random.default_rng(3).normal(size=(n,)).astype(np.float32)
    out, patches = jax.jit(lambda x: (get_patches(x), jax_get_patches(x[None, None])))(
        x
    )
    np.testing.assert_allclose(out, patches.reshape(-1, n).T)


def test_readme_treeclass_blocks_run_with_only_the_import_changed():
    """The kernex README's `treeclass`, `viz` and layer blocks, verbatim but for
    `import kernex` / `from kernex import ...` (and 20 training steps, no plot)."""
    import eqx_stencil.kernex as kernex
    from eqx_stencil.kernex import static_field, treeclass

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

    x = jnp.linspace(0, 1, 100)[:, None]
    y = x**3 + jax.random.uniform(jax.random.PRNGKey(0), (100, 1)) * 0.01
    model = StackedLinear(in_dim=1, out_dim=1, key=jax.random.PRNGKey(0))

    def loss_func(model, x, y):
        return jnp.mean((model(x) - y) ** 2)

    @jax.jit
    def update(model, x, y):
        value, grads = jax.value_and_grad(loss_func)(model, x, y)
        return value, model - 1e-3 * grads

    first, _ = update(model, x, y)
    for _ in range(1, 21):
        value, model = update(model, x, y)
    assert value < first

    # "Visualize `treeclass`": the README's figures (our tables add a Name column)
    summary = kernex.viz.summary(model)
    for figure in ["16,512", "64.500 KB", "Total params :\t16,897", "66.004 KB"]:
        assert figure in summary, figure
    box = kernex.viz.tree_box(model, array=x)
    assert "StackedLinear(Parent)" in box and box.count("f32[100,128]") == 4
    diagram = kernex.viz.tree_diagram(model).splitlines()
    assert diagram[0] == "StackedLinear" and "│   ├── weight=f32[128,128]" in diagram

    # "Perform Math operations on JAX pytrees with `treeclass`", verbatim
    @treeclass
    class Test:
        a: float
        b: float
        c: float
        name: str = static_field()  # ignore from jax computations

        __test__ = False  # not a pytest test class

    A = Test(10, 20, 30, "A")
    assert (A + A) == Test(20, 40, 60, "A")
    assert (A - A) == Test(0, 0, 0, "A")
    assert (A * A).reduce_mean() == 1400
    assert (A + 1) == Test(11, 21, 31, "A")
    assert (A["a"] + 1) == Test(11, None, None, "A")
    Aa = A["a"] + 10
    Ab = A["b"] + 10
    assert (Aa | Ab | A) == Test(20, 30, 30, "A")
    assert A[A > 10] == Test(a=None, b=20, c=30, name="A")
    B = Test([10, 10], 20, 30, "B")
    B.register_op(func=lambda node: node + 1, name="plus_one")
    assert B.plus_one() == Test(a=[11, 11], b=21, c=31, name="B")
    C = Test(jnp.array([10, 10]), 20, 30, "C")
    C.register_op(
        func=jnp.prod, name="product", reduce_op=lambda x, y: x * y, init_val=1
    )
    assert C.product() == Test(a=100, b=20, c=30, name="C")
    assert C.reduce_product() == 60000

    # "MaxPool2D layer": `kmap` + `treeclass`
    @treeclass
    class MaxPool2D:
        kernel_size: tuple[int, ...] | int = static_field()
        strides: tuple[int, ...] | int = static_field()
        padding: tuple[int, ...] | int | str = static_field()

        def __init__(self, *, kernel_size=(2, 2), strides=2, padding="valid"):
            self.kernel_size = kernel_size
            self.strides = strides
            self.padding = padding

        def __call__(self, x):
            @jax.vmap  # apply on batch dimension
            @jax.vmap  # apply on channels dimension
            @kernex.kmap(
                kernel_size=self.kernel_size, strides=self.strides, padding=self.padding
            )
            def _maxpool2d(x):
                return jnp.max(x)

            return _maxpool2d(x)

    layer = MaxPool2D(kernel_size=(2, 2), strides=(2, 2), padding="same")
    array = jnp.arange(1, 26).reshape(1, 1, 5, 5)
    np.testing.assert_array_equal(
        layer(array), [[[[7, 9, 10], [17, 19, 20], [22, 24, 25]]]]
    )
