"""Image filters as stencils: box blur, Gaussian blur and Sobel edges.

The image is made procedurally (a shaded background, a few shapes and noise),
so nothing is downloaded. The box blur is a whole-window mean, the Gaussian
blur a whole-window weighted sum whose weights are an extra argument of the
stencil call, and the Sobel edge magnitude a relative-index stencil. All use
`boundary="reflect"`.

The script checks every filter against `jax.scipy.signal.convolve2d` on the
reflect-padded image, that the blurs cut the noise in a flat patch of
background, and that the strongest Sobel edges lie on the shapes' outlines.

Run: `pip install -e ".[examples]"`, then
`python examples/image_filters.py [--smoke] [--out PATH]`
(`--out PATH`: save the picture there).
"""

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from jax.scipy.signal import convolve2d


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eqx_stencil as es  # noqa: E402


BOX, GAUSS, SIGMA = 5, 9, 2.0  # box width, Gaussian kernel width and sigma


@es.kmap(kernel_size=(BOX, BOX), padding="same", boundary="reflect")
def box_blur(window):
    return jnp.mean(window)


@es.kmap(kernel_size=(GAUSS, GAUSS), padding="same", boundary="reflect")
def weighted_sum(window, weights):
    return jnp.sum(window * weights)


@es.kmap(kernel_size=(3, 3), padding="same", boundary="reflect", relative=True)
def sobel(p):
    """Gradient magnitude from the Sobel operators (axis 0 down, axis 1 right)."""
    gx = (p[-1, 1] + 2 * p[0, 1] + p[1, 1]) - (p[-1, -1] + 2 * p[0, -1] + p[1, -1])
    gy = (p[1, -1] + 2 * p[1, 0] + p[1, 1]) - (p[-1, -1] + 2 * p[-1, 0] + p[-1, 1])
    return jnp.sqrt(gx**2 + gy**2)


dilate = es.kmap(jnp.max, kernel_size=(3, 3), padding="same")  # binary dilation


def gaussian_weights(size: int, sigma: float) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    return (np.outer(g, g) / np.sum(g) ** 2).astype(np.float32)


def make_image(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A test image in [0, 1] and the mask of its shapes' outlines."""
    y, x = np.mgrid[0:n, 0:n] / n
    shapes = np.zeros((n, n), dtype=bool)
    image = 0.15 + 0.25 * x  # shaded background
    disc = (x - 0.3) ** 2 + (y - 0.32) ** 2 < 0.17**2
    square = (abs(x - 0.72) < 0.15) & (abs(y - 0.3) < 0.12)
    triangle = (y > 0.55) & (y < 0.9) & (abs(x - 0.5) < (y - 0.55) * 0.8)
    ring = abs(np.hypot(x - 0.18, y - 0.78) - 0.1) < 0.03
    for mask, value in ((disc, 0.9), (square, 0.6), (triangle, 0.75), (ring, 1.0)):
        image = np.where(mask, value, image)
        shapes |= mask
    image = image + 0.08 * np.random.default_rng(seed).standard_normal((n, n))
    # Outline: shape pixels with a background 4-neighbour, or vice versa.
    padded = np.pad(shapes, 1, mode="edge")
    neighbours = [
        padded[1:-1, :-2],
        padded[1:-1, 2:],
        padded[:-2, 1:-1],
        padded[2:, 1:-1],
    ]
    outline = np.zeros_like(shapes)
    for nb in neighbours:
        outline |= nb != shapes
    return image.astype(np.float32), outline


def correlate(image: jax.Array, kernel: jax.Array) -> jax.Array:
    """Reference: reflect padding, then `convolve2d` with the flipped kernel."""
    k = kernel.shape[0]
    padded = jnp.pad(image, ((k - 1) // 2, k // 2), mode="reflect")
    return convolve2d(padded, kernel[::-1, ::-1], mode="valid")


@eqx.filter_jit
def apply_filters(image: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    """The three stencils (one compiled program)."""
    return {
        "box": box_blur(image),
        "gauss": weighted_sum(image, weights),
        "sobel": sobel(image),
    }


@jax.jit
def references(image: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    """The same filters from `convolve2d`."""
    sx = jnp.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    return {
        "box": correlate(image, jnp.full((BOX, BOX), 1 / BOX**2)),
        "gauss": correlate(image, weights),
        "sobel": jnp.hypot(correlate(image, sx), correlate(image, sx.T)),
    }


def plot(panels: dict[str, jax.Array], out: Path) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.1), layout="constrained")
    for ax, (title, img) in zip(axes, panels.items()):
        vmax = 1.0 if title.startswith(("image", "box", "Gauss")) else None
        ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small image")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="save the picture to PATH (by default none is written)",
    )
    args = parser.parse_args()
    n = 64 if args.smoke else 200

    start = time.perf_counter()
    image, outline = make_image(n)
    weights = gaussian_weights(GAUSS, SIGMA)
    out = {k: np.asarray(v) for k, v in apply_filters(image, weights).items()}
    box, gauss, edges = out["box"], out["gauss"], out["sobel"]

    # 1. Each filter equals the convolve2d reference.
    ref = references(image, weights)
    errors = {k: float(np.max(np.abs(out[k] - ref[k]))) for k in out}

    # 2. Blurring cuts the noise of a flat background patch.
    patch = (slice(n // 20, n // 8), slice(int(0.45 * n), int(0.55 * n)))
    images = {"image": image, "box": box, "gauss": gauss}
    noise = {k: float(img[patch].std()) for k, img in images.items()}

    # 3. The strongest edges lie on the outlines (within one pixel).
    near_outline = np.asarray(eqx.filter_jit(dilate)(outline))
    strong = edges > np.quantile(edges, 0.97)
    on_outline = float(near_outline[strong].mean())

    if args.out is not None:
        plot(
            {
                "image": image,
                f"box blur {BOX}x{BOX}": box,
                f"Gaussian, sigma={SIGMA}": gauss,
                "Sobel magnitude": edges,
            },
            args.out,
        )
    elapsed = time.perf_counter() - start
    print(
        f"image filters {n}x{n}: max |stencil - convolve2d| "
        + ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
        + f"; noise std {noise['image']:.3f} -> box {noise['box']:.3f}, gauss "
        f"{noise['gauss']:.3f}; top 3% edges on outlines: {on_outline:.0%} "
        f"({elapsed:.1f} s)"
    )
    if max(errors.values()) > 1e-4:
        raise SystemExit(f"a filter differs from convolve2d: {errors}")
    if not max(noise["box"], noise["gauss"]) < noise["image"] / 2:
        raise SystemExit(f"the blurs did not cut the noise: {noise}")
    if on_outline < 0.85:
        raise SystemExit(f"only {on_outline:.0%} of the strong edges are on outlines")


if __name__ == "__main__":
    main()
