"""`_boundary.padded_box` (a box of the virtually padded input, built from
pieces of the input) against the NumPy reference's explicitly padded array,
for every mode, padding (negative: cropped) and box; and its gradient, which
reads only the box's pieces."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from reference import MODES, pad_array

from eqx_stencil import _boundary
from eqx_stencil._geometry import DimLayout


@st.composite
def boxes(draw):
    """An input shape, its padding per dim and a box of the padded array."""
    ndim = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(MODES))
    dims = []
    for _ in range(ndim):
        size = draw(st.integers(1, 5))
        lo, hi = draw(st.integers(-1, 3)), draw(st.integers(-1, 3))
        if size + min(lo, 0) + min(hi, 0) < 1:
            lo = hi = 0
        padded = size + lo + hi
        start = draw(st.integers(0, padded - 1))
        stop = draw(st.integers(start + 1, padded))
        dims.append((size, lo, hi, (start, stop)))
    return mode, dims


@settings(max_examples=60, deadline=None)
@given(config=boxes(), cval=st.sampled_from([0.0, 2.5]), seed=st.integers(0, 99))
def test_padded_box_is_a_box_of_the_padded_array(config, cval, seed):
    mode, dims = config
    shape = tuple(size for size, _, _, _ in dims)
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    layouts = [DimLayout(size, 1, 1, 1, lo, hi) for size, lo, hi, _ in dims]
    box = [b for _, _, _, b in dims]
    pads = [(lo, hi) for _, lo, hi, _ in dims]
    expected = pad_array(x, pads, mode, cval)[tuple(slice(*b) for b in box)]

    def piece(x):
        return _boundary.padded_box(x, layouts, box, mode, cval)

    np.testing.assert_array_equal(jax.jit(piece)(x), expected)
    # The gradient of a weighted sum: each input element gets the weights of
    # the box's positions that read it.
    weights = np.random.default_rng(seed + 1).normal(size=expected.shape)
    indices = np.arange(x.size, dtype=np.float32).reshape(shape)
    read = pad_array(indices, pads, mode, -1)[tuple(slice(*b) for b in box)]
    expected_grad = np.zeros(x.size)
    np.add.at(expected_grad, read[read >= 0].astype(int), weights[read >= 0])
    grad = jax.jit(jax.grad(lambda x: (piece(x) * weights).sum()))(x)
    np.testing.assert_allclose(grad.reshape(-1), expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_every_box_of_small_padded_dims(mode):
    """Every box of every padding (cropped, none, fill) of lengths 1 to 3,
    along one dim of a 2-d input: the first, the last and inner blocks of the
    padded array, framed by fill on either side or both."""
    for size, lo, hi in itertools.product([1, 2, 3], [-1, 0, 2], [-1, 0, 2]):
        if size + min(lo, 0) + min(hi, 0) < 1:
            continue
        x = np.arange(2.0 * size, dtype=np.float32).reshape(2, size)
        layouts = [DimLayout(2, 1, 1, 1, 0, 0), DimLayout(size, 1, 1, 1, lo, hi)]
        padded = pad_array(x, [(0, 0), (lo, hi)], mode, 9.0)
        for start in range(padded.shape[1]):
            for stop in range(start + 1, padded.shape[1] + 1):
                box = [(0, 2), (start, stop)]
                got = _boundary.padded_box(x, layouts, box, mode, 9.0)
                np.testing.assert_array_equal(
                    got, padded[:, start:stop], err_msg=f"{size, lo, hi, box}"
                )
