"""Which linear lowerings a trace takes (`eqx_stencil/_conv_lowering.py`;
shared by tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

import eqx_stencil._conv_lowering as conv_lowering


# The lowerings of `_conv_lowering` and the functions that emit them.
FORMS = {"convolution": "_convolve", "contraction": "_contract_then_shift"}


@contextlib.contextmanager
def recorded_forms() -> Iterator[list[str]]:
    """The lowerings (`FORMS`) traced within this context, in order."""
    used: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        for form, name in FORMS.items():
            original = getattr(conv_lowering, name)

            def spy(*args, _original=original, _form=form):
                used.append(_form)
                return _original(*args)

            patch.setattr(conv_lowering, name, spy)
        yield used
