"""A small CNN built from `eqx_stencil.nn` layers, trained with optax.

The task: tell horizontal, vertical and diagonal bars apart in noisy 24x24
images generated with NumPy (random position, length and thickness; chance is
1/3). The model is an `eqx.nn.Sequential` of stencil layers (a box blur, two
convolutions, max and average pooling) and an `eqx.nn.Linear` head. Before
training, the script checks that the stencil layers give the same logits as
the same model built from `eqx.nn` layers with the weights copied over by
`eqx.tree_at`. It then trains with Adam, plots the training loss and the
held-out accuracy, prints the final accuracy, and exits non-zero when (in full
mode) the accuracy is not clearly above chance.

Run: `pip install -e ".[examples]"`, then
`python examples/classifier.py [--smoke] [--out PATH]`
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
import optax


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eqx_stencil.nn as enn  # noqa: E402


SIZE = 24
CLASSES = ("horizontal", "vertical", "diagonal")
NOISE = 0.35
MIN_ACCURACY = 0.9  # chance is 1/3


def make_images(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` noisy images `(count, 1, SIZE, SIZE)` of one bar each, and labels."""
    labels = rng.integers(0, len(CLASSES), count)
    images = np.zeros((count, 1, SIZE, SIZE), np.float32)
    for image, label in zip(images, labels):
        length = rng.integers(8, 17)
        thick = rng.integers(1, 3)
        row, col = rng.integers(1, SIZE - length, 2)
        if label == 0:
            image[0, row : row + thick, col : col + length] = 1.0
        elif label == 1:
            image[0, row : row + length, col : col + thick] = 1.0
        else:
            for t in range(length):
                image[0, row + t, col + t : col + t + thick] = 1.0
    images += NOISE * rng.standard_normal(images.shape).astype(np.float32)
    return images, labels


class Classifier(eqx.Module):
    """Stencil feature extractor, global average, linear head."""

    features: eqx.nn.Sequential
    head: eqx.nn.Linear

    def __init__(self, nn, key: jax.Array):
        """`nn`: the layer namespace, `eqx_stencil.nn` or `eqx.nn` (for the
        check: both build the same model)."""
        k1, k2, k3 = jax.random.split(key, 3)
        if nn is enn:
            blur = enn.AverageBlur(1, kernel_size=3)
        else:  # a box blur is a depthwise convolution with constant weights
            blur = eqx.nn.Conv2d(1, 1, 3, padding="SAME", use_bias=False, key=k1)
            blur = eqx.tree_at(lambda m: m.weight, blur, jnp.full((1, 1, 3, 3), 1 / 9))
        self.features = eqx.nn.Sequential(
            [
                blur,
                nn.Conv2d(1, 8, kernel_size=3, padding="same", key=k1),
                eqx.nn.Lambda(jax.nn.relu),
                nn.MaxPool2d(kernel_size=2, stride=2),
                nn.Conv2d(8, 16, kernel_size=3, padding="same", key=k2),
                eqx.nn.Lambda(jax.nn.relu),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
        )
        self.head = eqx.nn.Linear(16, len(CLASSES), key=k3)

    def __call__(self, image: jax.Array) -> jax.Array:
        features = self.features(image)  # (16, 6, 6)
        return self.head(jnp.mean(features, axis=(1, 2)))


def copy_weights(ours: Classifier, theirs: Classifier) -> Classifier:
    """`theirs`' weights in `ours` (same field names and shapes)."""

    def params(model):
        layers = [model.features.layers[1], model.features.layers[4], model.head]
        return [array for layer in layers for array in (layer.weight, layer.bias)]

    return eqx.tree_at(params, ours, params(theirs))


def loss_fn(model: Classifier, images: jax.Array, labels: jax.Array) -> jax.Array:
    logits = jax.vmap(model)(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@eqx.filter_jit
def accuracy(model: Classifier, images: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(jax.vmap(model)(images), axis=-1) == labels)


def plot(
    losses: list[float],
    evals: list[tuple[int, float]],
    batch: int,
    test_x: np.ndarray,
    test_y: np.ndarray,
    predicted: np.ndarray,
    out: Path,
) -> None:
    """Training curve, held-out accuracy, and 12 held-out images with their
    predicted class (`predicted`, one per image)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    axes[0].plot(np.arange(1, len(losses) + 1), losses, lw=0.8)
    axes[0].set(xlabel="step", ylabel="training loss", yscale="log")
    axes[0].set_title(f"cross-entropy (batch of {batch})")
    done, accs = zip(*evals)
    axes[1].plot(done, accs, marker="o", ms=3)
    axes[1].axhline(1 / len(CLASSES), color="grey", ls="--", label="chance")
    axes[1].set(xlabel="step", ylabel="held-out accuracy", ylim=(0, 1.02))
    axes[1].legend(loc="lower right")
    axes[1].set_title(f"final accuracy {accs[-1]:.1%} on {len(test_x)} images")
    shown = 12
    tiles = [np.pad(image[0], 1, constant_values=-1) for image in test_x[:shown]]
    rows = [np.concatenate(tiles[i : i + 4], axis=1) for i in range(0, shown, 4)]
    axes[2].imshow(np.concatenate(rows, axis=0), cmap="gray")
    for i, (guess, truth) in enumerate(zip(predicted, test_y[:shown])):
        row, col = divmod(i, 4)
        axes[2].text(
            (SIZE + 2) * col + 2,
            (SIZE + 2) * row + 6,
            CLASSES[guess][0].upper(),
            color="lime" if guess == truth else "red",
            fontsize=11,
            fontweight="bold",
        )
    axes[2].set_axis_off()
    axes[2].set_title("held-out images, predicted H / V / D (red: wrong)")
    fig.suptitle("eqx_stencil.nn classifier: blur, conv, max-pool, conv, avg-pool")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="save the picture to PATH (by default none is written)",
    )
    args = parser.parse_args()
    steps, batch, every = (5, 32, 1) if args.smoke else (800, 64, 40)

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    train_x, train_y = make_images(rng, 4096 if not args.smoke else 256)
    test_x, test_y = make_images(rng, 1024 if not args.smoke else 128)

    key = jax.random.PRNGKey(0)
    model = Classifier(enn, key)
    twin = Classifier(eqx.nn, jax.random.PRNGKey(1))
    model = copy_weights(model, twin)
    check = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))
    twin_err = float(
        jnp.max(jnp.abs(check(model, test_x[:64]) - check(twin, test_x[:64])))
    )

    optimiser = optax.adam(3e-3)
    state = optimiser.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, images, labels):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, images, labels)
        updates, state = optimiser.update(grads, state, model)
        return eqx.apply_updates(model, updates), state, loss

    losses, evals = [], []
    for i in range(steps):
        index = rng.integers(0, len(train_x), batch)
        model, state, loss = step(model, state, train_x[index], train_y[index])
        losses.append(float(loss))
        if (i + 1) % every == 0 or i == steps - 1:
            evals.append((i + 1, float(accuracy(model, test_x, test_y))))
    final = evals[-1][1]
    elapsed = time.perf_counter() - start

    if args.out is not None:
        predicted = jnp.argmax(check(model, test_x[:12]), axis=-1)
        plot(losses, evals, batch, test_x, test_y, np.asarray(predicted), args.out)

    if twin_err > 1e-4:
        raise SystemExit(f"eqx_stencil.nn and eqx.nn logits differ by {twin_err}")
    if args.smoke:
        # A few steps train nothing: the smoke run checks that everything runs
        # and that the layers agree with eqx.nn, not the accuracy.
        print(
            f"classifier smoke run OK: {steps} training steps, |stencil - eqx.nn "
            f"logits| = {twin_err:.1e} ({elapsed:.1f} s)"
        )
        return
    print(
        f"classifier: {steps} steps, held-out accuracy {final:.1%} (chance "
        f"{1 / len(CLASSES):.0%}, required {MIN_ACCURACY:.0%}), |stencil - eqx.nn "
        f"logits| = {twin_err:.1e} ({elapsed:.1f} s)"
    )
    if final < MIN_ACCURACY:
        raise SystemExit(f"accuracy {final:.1%} is below {MIN_ACCURACY:.0%}")


if __name__ == "__main__":
    main()
