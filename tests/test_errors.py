"""Bad input raises at construction or trace time, with a message that names the
argument and the value received."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_stencil as es


def tap0(w):
    return w[0]


def tap00(w):
    return w[0, 0]


# --------------------------------------------------------------------------
# Geometry arguments, at construction.


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(kernel_size=0), r"kernel_size[\s\S]*\b0\b"),
        (dict(kernel_size=-2), r"kernel_size[\s\S]*-2"),
        (dict(kernel_size=(3, 0)), r"kernel_size[\s\S]*\(3, 0\)"),
        (dict(kernel_size=3, strides=0), r"strides[\s\S]*\b0\b"),
        (dict(kernel_size=3, strides=-1), r"strides[\s\S]*-1"),
        (dict(kernel_size=3, strides=(1, -3)), r"strides[\s\S]*-3"),
        (dict(kernel_size=3, dilation=0), r"dilation[\s\S]*\b0\b"),
        (dict(kernel_size=3, dilation=-1), r"dilation[\s\S]*-1"),
        (dict(kernel_size=()), r"kernel_size[\s\S]*\(\)"),
    ],
)
def test_nonpositive_sizes_raise_value_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        es.kmap(tap0, **kwargs)


def test_minus_one_kernel_is_allowed():
    out = es.kmap(jnp.sum, kernel_size=-1)(jnp.arange(4.0))
    np.testing.assert_array_equal(out, [6.0])


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(kernel_size=2.5), r"kernel_size[\s\S]*2\.5"),
        (dict(kernel_size="3"), r"kernel_size[\s\S]*'3'"),
        (dict(kernel_size=(3, 2.0)), r"kernel_size[\s\S]*2\.0"),
        (dict(kernel_size=True), r"kernel_size[\s\S]*True"),
        (dict(kernel_size=3, strides=1.5), r"strides[\s\S]*1\.5"),
        (dict(kernel_size=3, dilation=None), r"dilation[\s\S]*None"),
    ],
)
def test_non_int_sizes_raise_type_error(kwargs, pattern):
    with pytest.raises(TypeError, match=pattern):
        es.kmap(tap0, **kwargs)


@pytest.mark.parametrize("padding", ["full", "causal", ("same", "bogus")])
def test_unknown_padding_string_raises_value_error(padding):
    bad = padding if isinstance(padding, str) else padding[1]
    with pytest.raises(ValueError, match=rf"padding[\s\S]*'{bad}'"):
        es.kmap(tap00 if isinstance(padding, tuple) else tap0, kernel_size=3,
                padding=padding)  # fmt: skip


@pytest.mark.parametrize("padding", [1.5, ((1, 2, 3),), ((1.0, 2),), (None,)])
def test_malformed_padding_raises_type_error(padding):
    with pytest.raises(TypeError, match="padding"):
        es.kmap(tap0, kernel_size=3, padding=padding)


@pytest.mark.parametrize("boundary", ["circular", "periodic", "", 3])
def test_unknown_boundary_raises_value_error(boundary):
    with pytest.raises((ValueError, TypeError), match=rf"boundary[\s\S]*{boundary!r}"):
        es.kmap(tap0, kernel_size=3, boundary=boundary)


def test_unknown_boundary_string_is_value_error():
    with pytest.raises(ValueError, match=r"boundary[\s\S]*'circular'"):
        es.kmap(tap0, kernel_size=3, boundary="circular")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(kernel_size=(3, 3), strides=(1, 1, 1)), r"strides"),
        (dict(kernel_size=(3, 3), dilation=(1,)), r"dilation"),
        (dict(kernel_size=(3, 3), padding=(1, 1, 1)), r"padding"),
        (dict(kernel_size=(3,), strides=(1, 2)), r"strides"),
    ],
)
def test_tuples_of_different_lengths_raise_value_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        es.kmap(tap0, **kwargs)


def test_bad_cval_raises_type_error():
    with pytest.raises(TypeError, match=r"cval[\s\S]*'zero'"):
        es.kmap(tap0, kernel_size=3, cval="zero")


def test_bad_named_axis_raises():
    with pytest.raises(TypeError, match=r"named_axis[\s\S]*\['i'\]"):
        es.kmap(tap0, kernel_size=3, named_axis=["i"])
    with pytest.raises(ValueError, match=r"named_axis[\s\S]*'i'"):
        es.kmap(tap00, kernel_size=3, named_axis={0: "i", 1: "i"})
    with pytest.raises(ValueError, match=r"named_axis[\s\S]*'i\+1'"):
        es.kmap(tap0, kernel_size=3, named_axis={0: "i+1"})


@pytest.mark.parametrize("func", [3, "f", jnp.ones(3)])
def test_non_callable_function_raises_type_error(func):
    with pytest.raises(TypeError, match="func"):
        es.kmap(func, kernel_size=3)


# --------------------------------------------------------------------------
# Applying a stencil: errors at trace time (also under jit / eval_shape).


def _raises_when_traced(stencil, x, error, pattern):
    with pytest.raises(error, match=pattern):
        stencil(x)
    with pytest.raises(error, match=pattern):
        jax.jit(lambda a: stencil(a))(x)
    with pytest.raises(error, match=pattern):
        jax.eval_shape(lambda a: stencil(a), jax.ShapeDtypeStruct(x.shape, x.dtype))


def test_rank_mismatch_raises_value_error():
    stencil = es.kmap(tap00, kernel_size=(3, 3))
    _raises_when_traced(stencil, jnp.ones(5), ValueError, r"\(3, 3\)[\s\S]*rank 1")
    _raises_when_traced(
        stencil, jnp.ones((4, 4, 4)), ValueError, r"\(3, 3\)[\s\S]*rank 3"
    )
    padded = es.kmap(tap0, kernel_size=3, padding=((1, 1), (1, 1)))
    _raises_when_traced(padded, jnp.ones(5), ValueError, r"padding[\s\S]*rank 1")


def test_kernel_larger_than_input_raises_value_error():
    _raises_when_traced(
        es.kmap(tap0, kernel_size=5), jnp.ones(3), ValueError, r"kernel_size 5"
    )
    _raises_when_traced(
        es.kmap(tap00, kernel_size=(2, 4), padding=((0, 0), (0, -1))),
        jnp.ones((3, 4)),
        ValueError,
        r"kernel_size 4[\s\S]*\(0, -1\)",
    )


def test_dilated_kernel_larger_than_input_raises_value_error():
    stencil = es.kmap(tap0, kernel_size=3, dilation=3)  # spans 7
    _raises_when_traced(stencil, jnp.ones(6), ValueError, r"dilation 3[\s\S]*7")
    # ... but fits once padded.
    assert es.kmap(tap0, kernel_size=3, dilation=3, padding=1)(jnp.ones(6)).shape == (
        2,
    )


def test_scalar_input_raises_value_error():
    stencil = es.kmap(tap0, kernel_size=1)
    _raises_when_traced(stencil, jnp.float32(1.0), ValueError, r"scalar[\s\S]*\(\)")


def test_stencil_without_function_raises_value_error():
    stencil = es.kmap(kernel_size=3)
    _raises_when_traced(stencil, jnp.ones(5), ValueError, r"no function")


@pytest.mark.parametrize(
    "func, kernel, pattern",
    [
        (lambda w: w[2], 3, r"\b2\b[\s\S]*-1\.\.1"),
        (lambda w: w[-2], 3, r"-2[\s\S]*-1\.\.1"),
        (lambda w: w[-2], 4, r"-2[\s\S]*-1\.\.2"),
        (lambda w: w[3], 4, r"\b3\b[\s\S]*-1\.\.2"),
        (lambda w: w[1], 1, r"\b1\b[\s\S]*0\.\.0"),
        # Out-of-range tap inside a whole-window function.
        (lambda w: w.sum() + w[2], 3, r"-1\.\.1"),
    ],
)
def test_relative_offset_outside_window_raises_index_error(func, kernel, pattern):
    stencil = es.kmap(func, kernel_size=kernel, relative=True, padding="same")
    _raises_when_traced(stencil, jnp.ones(6), IndexError, pattern)


def test_relative_offset_outside_window_2d_names_dim():
    stencil = es.kmap(lambda w: w[0, 2], kernel_size=(5, 3), relative=True)
    _raises_when_traced(stencil, jnp.ones((6, 6)), IndexError, r"dim 1[\s\S]*-1\.\.1")


def test_absolute_index_outside_window_raises_index_error():
    stencil = es.kmap(lambda w: w[3], kernel_size=3)
    _raises_when_traced(stencil, jnp.ones(6), IndexError, r"\b3\b[\s\S]*-3\.\.2")


def test_named_offset_outside_window_raises_index_error():
    stencil = es.kmap(
        lambda w: w["i+2"], kernel_size=3, relative=True, named_axis={0: "i"}
    )
    _raises_when_traced(stencil, jnp.ones(6), IndexError, r"i\+2[\s\S]*-1\.\.1")


@pytest.mark.parametrize("key", ["q+1", "i*2", "i+", "1+i", "i+-1"])
def test_unparseable_named_key_raises_index_error(key):
    stencil = es.kmap(
        lambda w: w[key], kernel_size=3, relative=True, named_axis={0: "i"}
    )
    _raises_when_traced(stencil, jnp.ones(6), IndexError, f"'{re.escape(key)}'")


def test_named_key_at_the_wrong_position_raises_index_error():
    stencil = es.kmap(
        lambda w: w[0, "i"], kernel_size=3, relative=True, named_axis={0: "i"}
    )
    _raises_when_traced(stencil, jnp.ones((5, 5)), IndexError, r"'i'")


def test_named_axis_beyond_rank_raises_value_error():
    stencil = es.kmap(
        lambda w: w["i", "j"],
        kernel_size=3,
        relative=True,
        named_axis={0: "i", 1: "j", 2: "k"},
    )
    _raises_when_traced(
        stencil, jnp.ones((5, 5)), ValueError, r"named_axis[\s\S]*\b2\b[\s\S]*'k'"
    )


def test_too_many_window_indices_raises_index_error():
    stencil = es.kmap(lambda w: w[0, 0], kernel_size=3, relative=True)
    _raises_when_traced(stencil, jnp.ones(5), IndexError, r"\(0, 0\)")


# --------------------------------------------------------------------------
# Zero-length dims: the output is empty where the geometry allows it.


@pytest.mark.parametrize(
    "kind, kwargs, shape, func, expected",
    [
        ("kmap", dict(kernel_size=1), (0,), tap0, (0,)),
        ("kmap", dict(kernel_size=3, padding="same"), (0,), tap0, (0,)),
        ("kmap", dict(kernel_size=3), (0, 4), lambda w: w, (0, 2, 3, 3)),
        ("kmap", dict(kernel_size=(1, 2), strides=2), (3, 0), tap00, (2, 0)),
        ("kmap", dict(kernel_size=3), (0,), lambda w: {"a": w[0], "b": w}, None),
        ("smap", dict(kernel_size=3, offset=1), (0, 3), tap00, (0, 3)),
        ("kscan", dict(kernel_size=3, padding=1), (0,), tap0, (0,)),
        ("sscan", dict(kernel_size=(3, 1), offset=1), (4, 0), tap00, (4, 0)),
    ],
)
def test_zero_length_dims_give_empty_outputs(kind, kwargs, shape, func, expected):
    stencil = getattr(es, kind)(func, **kwargs)
    for apply in (stencil, jax.jit(stencil)):
        out = apply(jnp.ones(shape, jnp.float16))
        if expected is None:  # a pytree output: every leaf empty, shaped
            assert out["a"].shape == (0,) and out["b"].shape == (0, 3)
        else:
            assert out.shape == expected and out.dtype == jnp.float16


def test_zero_length_dim_with_padding_holding_windows():
    """Windows wholly in the padding read the fill value, as in NumPy."""
    stencil = es.kmap(lambda w: w, kernel_size=1, padding=2, cval=7.0)
    np.testing.assert_array_equal(stencil(jnp.ones(0)), np.full((4, 1), 7.0))
    edge = es.kmap(lambda w: w, kernel_size=1, padding=2, boundary="edge")
    _raises_when_traced(
        edge, jnp.ones(0), ValueError, r"boundary='edge'[\s\S]*length 0"
    )


def test_kernel_larger_than_a_non_empty_input_still_raises():
    _raises_when_traced(
        es.kmap(tap0, kernel_size=3), jnp.ones((2, 0)), ValueError, r"kernel_size 3"
    )
