"""Draw the pictures of the concept pages: `python docs/figures.py`.

Each picture is computed from eqx_stencil itself (the windows a stencil sees,
the values a boundary mode fills in), so it shows what the code does.
"""

from pathlib import Path

import jax.numpy as jnp
import matplotlib
import numpy as np


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eqx_stencil as es  # noqa: E402


IMAGES = Path(__file__).parent / "images"
MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def cells(ax, row: int, values, colours, first: int = 0) -> None:
    """One row of labelled square cells starting at column `first`."""
    for i, (value, colour) in enumerate(zip(values, colours)):
        ax.add_patch(plt.Rectangle((first + i, -row), 1, 0.9, color=colour, ec="k"))
        ax.text(first + i + 0.5, -row + 0.45, str(value), ha="center", va="center")


def geometry_figure() -> None:
    """The windows of a 1-D stencil: kernel 3, padding (2, 2), stride 2,
    dilation 2 over an input of 9; each window's taps and its output."""
    n, kernel, stride, dilation, pad = 9, 3, 2, 2, (2, 2)
    taps = es.kmap(
        lambda w: w,
        kernel_size=kernel,
        strides=stride,
        dilation=dilation,
        padding=(pad,),
        cval=-1,
    )(jnp.arange(n))
    fig, ax = plt.subplots(figsize=(7, 0.6 * (len(taps) + 2)))
    padded = ["·"] * pad[0] + list(range(n)) + ["·"] * pad[1]
    colours = ["#ddd"] * pad[0] + ["#9cf"] * n + ["#ddd"] * pad[1]
    cells(ax, 0, padded, colours)
    ax.text(-0.3, 0.45, "padded input", ha="right", va="center")
    for o, window in enumerate(np.asarray(taps)):
        row = o + 1
        for t, value in enumerate(window):
            column = o * stride + t * dilation
            label = "0" if value == -1 else str(value)
            cells(ax, row, [label], ["#fc9"], first=column)
        ax.text(-0.3, -row + 0.45, f"output {o}", ha="right", va="center")
    ax.set_xlim(-3, len(padded) + 0.2)
    ax.set_ylim(-len(taps) - 0.2, 1)
    ax.axis("off")
    ax.set_title(
        f"kernel_size={kernel}, strides={stride}, dilation={dilation}, "
        f"padding={pad}: {len(taps)} outputs"
    )
    fig.savefig(IMAGES / "geometry.png", dpi=90, bbox_inches="tight")
    plt.close(fig)


def boundaries_figure() -> None:
    """What each boundary mode fills into two cells of padding per side."""
    x = jnp.arange(1, 6)
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(MODES)))
    for row, mode in enumerate(MODES):
        padded = es.kmap(
            lambda w: w[0], kernel_size=1, padding=((2, 2),), boundary=mode, cval=0
        )(x)
        colours = ["#ddd"] * 2 + ["#9cf"] * len(x) + ["#ddd"] * 2
        cells(ax, row, [int(v) for v in padded], colours)
        ax.text(-0.3, -row + 0.45, f'"{mode}"', ha="right", va="center")
    ax.set_xlim(-3, len(x) + 4.2)
    ax.set_ylim(-len(MODES) + 0.8, 1)
    ax.axis("off")
    ax.set_title("boundary modes: input 1..5 (blue), padding (2, 2) (grey)")
    fig.savefig(IMAGES / "boundaries.png", dpi=90, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    IMAGES.mkdir(exist_ok=True)
    geometry_figure()
    boundaries_figure()
