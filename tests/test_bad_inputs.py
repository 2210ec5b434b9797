"""The probe suite: every public argument of `kmap`/`kscan`/`smap`/`sscan`,
`iterate`, `.at[index].set(func)` and a stencil call, given a wrong type, a
wrong value or a NumPy/JAX scalar form.

A wrong type raises `TypeError`, a wrong value `ValueError` (an index outside
the window or array `IndexError`), each naming the argument; a NumPy or JAX
scalar form is accepted and gives the result of the plain Python value. A
field that does not apply to a kind cannot be set on it."""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
import pytest

import eqx_stencil as es


X = jnp.arange(1.0, 7.0)
CONSTRUCTORS = {"kmap": es.kmap, "kscan": es.kscan, "smap": es.smap, "sscan": es.sscan}
ALL = tuple(CONSTRUCTORS)
WINDOWED = ("kmap", "kscan")
SHAPE_PRESERVING = ("smap", "sscan")
SCANS = ("kscan", "sscan")


def centre(u):
    return u[0]


def build(kind: str, **kwargs):
    kwargs.setdefault("kernel_size", 1)
    return CONSTRUCTORS[kind](centre, **kwargs)


# (argument, kinds, bad value, error); values of the right type are checked by
# the package, others under pytest first by the jaxtyping hook: both name the
# argument.
WRONG = [
    ("kernel_size", ALL, "3", TypeError),
    ("kernel_size", ALL, 2.5, TypeError),
    ("kernel_size", ALL, True, TypeError),
    ("kernel_size", ALL, jnp.asarray(3.0), TypeError),
    ("kernel_size", ALL, 0, ValueError),
    ("kernel_size", ALL, -2, ValueError),
    ("kernel_size", ALL, (), ValueError),
    ("strides", ALL, 1.5, TypeError),
    ("strides", ALL, 0, ValueError),
    ("strides", ALL, (1, 0), ValueError),
    ("padding", WINDOWED, 1.5, TypeError),
    ("padding", WINDOWED, (None,), TypeError),
    ("padding", WINDOWED, "full", ValueError),
    ("padding", WINDOWED, (), ValueError),
    ("dilation", WINDOWED, "2", TypeError),
    ("dilation", WINDOWED, 0, ValueError),
    ("offset", SHAPE_PRESERVING, 1.5, TypeError),
    ("offset", SHAPE_PRESERVING, "1", TypeError),
    ("offset", SHAPE_PRESERVING, -1, ValueError),
    ("offset", SHAPE_PRESERVING, ((1, -1),), ValueError),
    ("relative", ALL, "no", TypeError),
    ("relative", ALL, 1, TypeError),
    ("relative", ALL, None, TypeError),
    ("named_axis", ALL, ["i"], TypeError),
    ("named_axis", ALL, {0: 1}, TypeError),
    ("named_axis", ALL, {-1: "i"}, ValueError),
    ("named_axis", ALL, {0: "i+1"}, ValueError),
    ("boundary", ALL, 3, TypeError),
    ("boundary", ALL, "periodic", ValueError),
    ("cval", ALL, "zero", TypeError),
    ("cval", ALL, None, TypeError),
    ("cval", ALL, np.ones(2), TypeError),
    ("reverse", SCANS, "no", TypeError),
    ("reverse", SCANS, 0, TypeError),
    ("sharding", ALL, "x", TypeError),
]
WRONG_CASES = [
    pytest.param(kind, name, value, error, id=f"{kind}-{name}={value!r}")
    for name, kinds, value, error in WRONG
    for kind in kinds
]


@pytest.mark.parametrize("kind, name, value, error", WRONG_CASES)
def test_constructor_rejects(kind, name, value, error):
    with pytest.raises(error, match=name):
        build(kind, **{name: value})


@pytest.mark.parametrize("kind, name, value, error", WRONG_CASES)
def test_replace_rejects(kind, name, value, error):
    """`dataclasses.replace` runs the same checks as the constructor."""
    with pytest.raises(error, match=name):
        dataclasses.replace(build(kind), **{name: value})


@pytest.mark.parametrize("kind", ALL)
def test_non_callable_function(kind):
    with pytest.raises(TypeError, match="func"):
        CONSTRUCTORS[kind](3, kernel_size=1)
    with pytest.raises(TypeError, match="func"):
        dataclasses.replace(build(kind), func=3)


@pytest.mark.parametrize(
    "kind, name, value",
    [
        *((kind, "padding", 1) for kind in SHAPE_PRESERVING),
        *((kind, "dilation", 2) for kind in SHAPE_PRESERVING),
        *((kind, "offset", 1) for kind in WINDOWED),
        ("kmap", "reverse", True),
        ("smap", "reverse", True),
    ],
)
def test_field_of_another_kind_cannot_be_set(kind, name, value):
    with pytest.raises(TypeError, match=name):
        build(kind, **{name: value})
    with pytest.raises(TypeError, match=name):
        dataclasses.replace(build(kind), **{name: value})


def test_kinds_are_types():
    kinds = {
        "kmap": es.Map,
        "kscan": es.Scan,
        "smap": es.ShapeMap,
        "sscan": es.ShapeScan,
    }
    for kind, cls in kinds.items():
        stencil = build(kind)
        assert type(stencil) is cls
        assert isinstance(stencil, es.Stencil)
    with pytest.raises(TypeError):
        es.Stencil(centre, kernel_size=1)  # pyright: ignore[reportAbstractUsage]


def test_region_fields_are_checked():
    stencil = build("kmap")
    with pytest.raises(TypeError, match="region"):
        dataclasses.replace(stencil, regions=(3,))
    with pytest.raises(TypeError, match="region_keys"):
        dataclasses.replace(stencil, regions=(centre,), region_keys=("x",))
    with pytest.raises(ValueError, match="region key"):
        dataclasses.replace(stencil, regions=(centre,))


# --------------------------------------------------------------------------
# NumPy and JAX scalar forms are accepted and mean the plain value.

SCALAR_FORMS = [  # (argument, kinds, plain value, its other forms)
    ("kernel_size", ALL, 3, [np.int64(3), np.int32(3), jnp.asarray(3)]),
    ("kernel_size", ALL, (3,), [[3], (np.int32(3),), [jnp.asarray(3)]]),
    ("strides", ALL, 2, [np.int64(2), jnp.asarray(2)]),
    ("strides", ALL, (2,), [(np.int8(2),), [2]]),
    ("padding", WINDOWED, 1, [np.int64(1), jnp.asarray(1)]),
    ("padding", WINDOWED, (1,), [(np.int64(1),), [1]]),
    ("padding", WINDOWED, ((1, 2),), [((np.int64(1), np.int16(2)),), [[1, 2]]]),
    ("dilation", WINDOWED, 2, [np.int64(2), jnp.asarray(2)]),
    ("offset", SHAPE_PRESERVING, 1, [np.int64(1)]),
    ("offset", SHAPE_PRESERVING, ((1, 0),), [((np.int64(1), 0),), [[1, 0]]]),
    ("relative", ALL, True, [np.bool_(True)]),
    ("reverse", SCANS, True, [np.bool_(True)]),
    ("named_axis", ALL, {0: "i"}, [{np.int64(0): "i"}]),
    (
        "cval",
        ALL,
        1.5,
        [np.float32(1.5), np.float64(1.5), np.asarray(1.5), jnp.asarray(1.5)],
    ),
]


def window_sum(u):
    return u[0] + u[1]  # taps 0 and 1, absolute or relative (kernel_size >= 3)


def scalar_form_stencils(kind, name, plain, form):
    base = {"kernel_size": 3, "padding": 2 if name == "dilation" else 1}
    if kind not in WINDOWED:
        del base["padding"]
    if name == "kernel_size":
        del base["kernel_size"]
    return tuple(
        CONSTRUCTORS[kind](window_sum, **(base | {name: value}))
        for value in (plain, form)
    )


@pytest.mark.parametrize(
    "kind, name, plain, form",
    [
        pytest.param(kind, name, plain, form, id=f"{kind}-{name}={form!r}")
        for name, kinds, plain, forms in SCALAR_FORMS
        for kind in kinds
        for form in forms
    ],
)
def test_scalar_forms_build_the_stencil_of_the_plain_value(kind, name, plain, form):
    expected, found = scalar_form_stencils(kind, name, plain, form)
    assert found == expected


@pytest.mark.parametrize(
    "kind, name, plain, forms",
    [
        pytest.param(kinds[0], name, plain, forms, id=f"{kinds[0]}-{name}={plain}")
        for name, kinds, plain, forms in SCALAR_FORMS
    ],
)
def test_scalar_forms_give_the_result_of_the_plain_value(kind, name, plain, forms):
    for form in forms:
        expected, found = scalar_form_stencils(kind, name, plain, form)
        np.testing.assert_array_equal(found(X), expected(X))


@pytest.mark.parametrize("form", [np.int64(7), np.int8(7), jnp.asarray(7), 7.0])
def test_integer_cval_forms_on_integer_arrays(form):
    stencil = es.kmap(centre, kernel_size=3, padding=1, relative=True, cval=form)
    patches = es.kmap(lambda u: u, kernel_size=3, padding=1, cval=form)
    x = jnp.arange(4)
    np.testing.assert_array_equal(stencil(x), x)
    assert patches(x)[0, 0] == 7 and patches(x).dtype == x.dtype


# --------------------------------------------------------------------------
# cval must have a value in the input's dtype (checked when applied).


@pytest.mark.parametrize(
    "cval, dtype, problem",
    [
        (float("inf"), jnp.int32, "not a finite integer"),
        (float("nan"), jnp.int32, "not a finite integer"),
        (-float("inf"), jnp.uint8, "not a finite integer"),
        (1.5, jnp.int32, "not a finite integer"),
        (300, jnp.uint8, "outside the dtype's range 0..255"),
        (-1, jnp.uint8, "outside the dtype's range 0..255"),
        (2**40, jnp.int32, "outside the dtype's range"),
        (1 + 2j, jnp.float32, "non-zero imaginary part"),
        (1 + 2j, jnp.int32, "non-zero imaginary part"),
        (2, jnp.bool_, "neither 0 nor 1"),
        (1e300, jnp.float32, "outside the dtype's range"),
        (1e5, jnp.float16, "outside the dtype's range"),
    ],
)
@pytest.mark.parametrize("kind", ["kmap", "sscan"])  # one check, in padded_box
def test_cval_without_a_value_in_the_dtype(kind, cval, dtype, problem):
    stencil = build(kind, kernel_size=3, cval=cval)
    x = jnp.zeros(4, dtype)
    name, problem = re.escape(f"cval={cval!r}"), re.escape(problem)
    pattern = rf"{name}[\s\S]*{jnp.dtype(dtype).name}[\s\S]*{problem}"
    with pytest.raises(ValueError, match=pattern):
        stencil(x)


@pytest.mark.parametrize(
    "cval, dtype, fill",
    [
        (3.0, jnp.int32, 3),
        (1 + 0j, jnp.float32, 1.0),
        (True, jnp.int32, 1),
        (1, jnp.bool_, True),
        (float("inf"), jnp.float32, np.inf),
        (float("nan"), jnp.float16, np.nan),
        (0.1, jnp.float32, np.float32(0.1)),
        (1 + 2j, jnp.complex64, 1 + 2j),
    ],
)
def test_cval_with_a_value_in_the_dtype(cval, dtype, fill):
    patches = es.kmap(lambda u: u, kernel_size=2, padding=1, cval=cval)
    out = patches(jnp.ones(3, dtype))
    assert out.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(out[0, 0], np.asarray(fill, dtype))


def test_traced_cval_is_rejected():
    import jax

    def build_inside(c):
        return es.kmap(centre, kernel_size=1, cval=c)(X)

    with pytest.raises(TypeError, match="cval"):
        jax.jit(build_inside)(1.0)


# --------------------------------------------------------------------------
# The call: the array and the region index.


@pytest.mark.parametrize(
    "array, error, pattern",
    [
        ("abc", TypeError, r"array[\s\S]*'abc'"),
        ([1.0, 2.0, 3.0], TypeError, r"array[\s\S]*list[\s\S]*jnp.asarray"),
        ((X, 1.0), TypeError, r"array[\s\S]*\[1\][\s\S]*1.0"),
        (jnp.float32(1.0), ValueError, r"array must have at least one dim"),
        (jnp.ones((2, 2)), ValueError, r"kernel rank 1[\s\S]*array rank 2"),
        ({}, ValueError, r"array[\s\S]*holds no array"),
    ],
)
def test_bad_array(array, error, pattern):
    stencil = es.kmap(centre, kernel_size=(1,))
    with pytest.raises(error, match=pattern):
        stencil(array)


@pytest.mark.parametrize(
    "index, error, pattern",
    [
        (1.5, TypeError, r"region index[\s\S]*1.5"),
        ("a", TypeError, r"region index[\s\S]*'a'"),
        ((0, None), TypeError, r"region index[\s\S]*None"),
        (slice(0, 2, 0), ValueError, r"step must not be 0"),
        (slice(0.5, 2), TypeError, r"region slice bounds[\s\S]*0.5"),
        ((..., 0, ...), IndexError, r"one `...`"),
    ],
)
def test_bad_region_index(index, error, pattern):
    with pytest.raises(error, match=pattern):
        build("kmap").at[index]


def test_region_index_outside_the_array_and_bad_region_function():
    with pytest.raises(IndexError, match=r"region \[9\] is outside"):
        build("kmap").at[9].set(centre)(X)
    with pytest.raises(TypeError, match="func"):
        build("kmap").at[0].set(3)  # pyright: ignore[reportArgumentType]


@pytest.mark.parametrize("index", [np.int64(2), slice(np.int64(2), 3)])
def test_region_index_scalar_forms(index):
    stencil = build("kmap").at[index].set(lambda u: -u[0])
    np.testing.assert_array_equal(stencil(X), X.at[2].set(-3.0))


# --------------------------------------------------------------------------
# iterate


def double(u):
    return 2 * u


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(step=3), TypeError, r"step"),
        (dict(num_steps=1.5), TypeError, r"num_steps[\s\S]*1.5"),
        (dict(num_steps="2"), TypeError, r"num_steps[\s\S]*'2'"),
        (dict(num_steps=-1), ValueError, r"num_steps must be an int >= 0[\s\S]*-1"),
        (dict(checkpoint_every=0), ValueError, r"checkpoint_every[\s\S]*>= 1"),
        (dict(checkpoint_every=2.0), TypeError, r"checkpoint_every[\s\S]*2.0"),
    ],
)
def test_iterate_rejects(kwargs, error, pattern):
    arguments = dict(step=double, init=X, num_steps=3) | kwargs
    step, init, num_steps = (arguments.pop(k) for k in ("step", "init", "num_steps"))
    with pytest.raises(error, match=pattern):
        es.iterate(step, init, num_steps, **arguments)


@pytest.mark.parametrize("num_steps", [np.int64(3), jnp.asarray(3)])
@pytest.mark.parametrize("every", [None, np.int64(2), jnp.asarray(2)])
def test_iterate_scalar_forms(num_steps, every):
    out = es.iterate(double, X, num_steps, checkpoint_every=every)
    np.testing.assert_array_equal(out, 8 * X)
