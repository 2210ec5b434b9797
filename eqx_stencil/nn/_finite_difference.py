"""`FiniteDifference`: a stencil layer whose taps are learnable parameters."""

import functools as ft
import operator
from collections.abc import Callable, Sequence
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Inexact, PRNGKeyArray

from .._geometry import RealLike, is_int, is_real
from .._stencil import kmap
from ._parse import (
    PADDING_MODES,
    check_input,
    default_floating_dtype,
    parse_padding_mode,
)


def _center(n: int, dim: int | None = None, tap: int = 1) -> tuple[int, ...]:
    """The centre of a 3^n kernel, moved to `tap` along `dim`."""
    return tuple(tap if d == dim else 1 for d in range(n))


def _laplacian(n: int) -> Callable[[tuple[float, ...], int], np.ndarray]:
    """The (2n+1)-point Laplacian: second central differences summed over dims."""

    def taps(spacing: tuple[float, ...], axis: int) -> np.ndarray:
        del axis
        w = np.zeros((3,) * n)
        for dim, h in enumerate(spacing):
            w[_center(n, dim, 0)] += 1 / h**2
            w[_center(n, dim, 2)] += 1 / h**2
            w[_center(n)] -= 2 / h**2
        return w

    return taps


def _laplacian_9(spacing: tuple[float, ...], axis: int) -> np.ndarray:
    """The isotropic 9-point Laplacian (Patra-Karttunen / Mehrstellen)."""
    del axis
    hx, hy = spacing
    if hx != hy:
        raise ValueError(
            f"scheme='laplacian_9' needs the same spacing in both dims; got "
            f"spacing={spacing}. Use 'laplacian_5' for anisotropic grids."
        )
    return np.array([[1, 4, 1], [4, -20, 4], [1, 4, 1]]) / (6 * hx**2)


def _central(n: int) -> Callable[[tuple[float, ...], int], np.ndarray]:
    """Second-order central first derivative along `axis`: (u[+1] - u[-1]) / 2h."""

    def taps(spacing: tuple[float, ...], axis: int) -> np.ndarray:
        w = np.zeros((3,) * n)
        w[_center(n, axis, 0)] = -1 / (2 * spacing[axis])
        w[_center(n, axis, 2)] = 1 / (2 * spacing[axis])
        return w

    return taps


# name: (number of spatial dims, taps from (spacing, axis), description)
SCHEMES: dict[str, tuple[int, Callable[[tuple[float, ...], int], np.ndarray], str]] = {
    "laplacian_3": (1, _laplacian(1), "1-D 3-point Laplacian [1, -2, 1] / h^2"),
    "laplacian_5": (2, _laplacian(2), "2-D 5-point Laplacian"),
    "laplacian_9": (2, _laplacian_9, "2-D isotropic 9-point Laplacian"),
    "laplacian_7": (3, _laplacian(3), "3-D 7-point Laplacian"),
    "central_1d": (1, _central(1), "1-D central first derivative [-1, 0, 1] / 2h"),
    "central_2d": (2, _central(2), "2-D central first derivative along `axis`"),
    "central_3d": (3, _central(3), "3-D central first derivative along `axis`"),
}


def _spacing(spacing: Any, n: int) -> tuple[float, ...]:
    accepted = f"a positive number or a sequence of {n} positive numbers (one per dim)"
    if isinstance(spacing, str):
        raise TypeError(f"spacing must be {accepted}; got {spacing!r}.")
    values = spacing if isinstance(spacing, Sequence) else (spacing,) * n
    if len(values) != n:
        raise ValueError(f"spacing must be {accepted}; got {spacing!r}.")
    out = []
    for value in values:
        if not is_real(value):
            raise TypeError(f"spacing must be {accepted}; got {spacing!r}.")
        if not float(value) > 0:
            raise ValueError(f"spacing must be {accepted}; got {spacing!r}.")
        out.append(float(value))
    return tuple(out)


class FiniteDifference(eqx.Module):
    """A finite-difference operator with learnable taps.

    The taps (`weight`, of shape `(3,) * num_spatial_dims`) are a parameter,
    initialised from a named scheme; the layer correlates every channel with
    them (`out[c, i] = sum_t weight[t] * x[c, i + t - 1]`, the same taps for
    every channel) with `"same"` padding filled as `padding_mode` says, through
    an [`eqx_stencil.kmap`][] stencil. Train it (`eqx.filter_grad`) to learn a
    discretisation, or freeze it for a fixed operator.

    Schemes (`h`: the grid spacing of each dim):

    - `"laplacian_3"` (1-D): `(u[i-1] - 2 u[i] + u[i+1]) / h^2`.
    - `"laplacian_5"` (2-D): the 5-point Laplacian, the sum of second central
      differences along both dims (spacing may differ per dim).
    - `"laplacian_9"` (2-D): the isotropic 9-point Laplacian,
      `[[1, 4, 1], [4, -20, 4], [1, 4, 1]] / (6 h^2)` (equal spacing only).
    - `"laplacian_7"` (3-D): the 7-point Laplacian.
    - `"central_1d"`, `"central_2d"`, `"central_3d"`: the second-order central
      first derivative `(u[i+1] - u[i-1]) / (2 h)` along dim `axis` (of the
      spatial dims).

    **Example:**

    ```python
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import eqx_stencil as es

    h = 0.1
    grid = jnp.arange(20) * h
    u = (grid[:, None] ** 2 + grid[None, :] ** 2)[None]  # one channel
    lap = es.nn.FiniteDifference("laplacian_5", spacing=h)
    lap(u)[0, 1:-1, 1:-1]  # 4.0 inside (exact for quadratics)

    # the taps are parameters: fit them to data with eqx.filter_grad
    loss = lambda layer: jnp.mean((layer(u) - 4.0)[:, 1:-1, 1:-1] ** 2)
    grads = eqx.filter_grad(loss)(lap)
    grads.weight.shape  # (3, 3)
    ```
    """

    weight: Array
    scheme: str = eqx.field(static=True)
    spacing: tuple[float, ...] = eqx.field(static=True)
    axis: int = eqx.field(static=True)
    num_spatial_dims: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    padding_mode: str = eqx.field(static=True)

    def __init__(
        self,
        scheme: str = "laplacian_5",
        *,
        spacing: RealLike | Sequence[RealLike] = 1.0,
        axis: int = 0,
        padding_mode: str = "ZEROS",
        dtype=None,
    ):
        """**Arguments:**

        - `scheme`: the initial taps, one of `"laplacian_3"`, `"laplacian_5"`,
          `"laplacian_9"`, `"laplacian_7"`, `"central_1d"`, `"central_2d"`,
          `"central_3d"` (see the class notes). It fixes `num_spatial_dims`.
        - `spacing`: the grid spacing `h`: a positive number, or one per
          spatial dim.
        - `axis`: for the `central_*` schemes, the spatial dim to
          differentiate along (0 = the first dim after the channels); negative
          values count from the end.
        - `padding_mode`: `'ZEROS'` (default: Dirichlet zero outside),
          `'REFLECT'`, `'REPLICATE'` or `'CIRCULAR'` (periodic).
        - `dtype`: dtype of the taps; default float32 (float64 in 64-bit mode).

        **Returns:**

        The layer. Call it on an array of shape `(channels, *spatial)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        lap = es.nn.FiniteDifference("laplacian_3", spacing=0.5)
        lap(jnp.array([[0.0, 1.0, 4.0, 9.0]]))  # [[4, 8, 8, -56]]: u'' = 2 inside
        ```
        """
        if not isinstance(scheme, str) or scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {tuple(SCHEMES)}; got {scheme!r}.")
        n, taps, _ = SCHEMES[scheme]
        if not is_int(axis) or not -n <= operator.index(axis) < n:
            raise ValueError(
                f"axis must be an int in [{-n}, {n}) (a spatial dim of scheme "
                f"{scheme!r}, which has {n}); got {axis!r}."
            )
        self.scheme = scheme
        self.spacing = _spacing(spacing, n)
        self.axis = operator.index(axis) % n
        self.num_spatial_dims = n
        self.kernel_size = (3,) * n
        self.padding_mode = parse_padding_mode(padding_mode)
        dtype = default_floating_dtype() if dtype is None else dtype
        self.weight = jnp.asarray(taps(self.spacing, self.axis), dtype=dtype)

    def __call__(
        self,
        x: Inexact[Array, " channels *spatial"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Inexact[Array, " channels *spatial"]:
        """**Arguments:**

        - `x`: the input, of shape `(channels, dim_1, .., dim_N)`.
        - `key`: ignored; for compatibility with the Equinox API (keyword only).

        **Returns:**

        The operator applied to every channel: same shape as `x`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqx_stencil as es

        ddx = es.nn.FiniteDifference("central_2d", axis=1, padding_mode="circular")
        ddx(jnp.ones((1, 8, 8))).shape  # (1, 8, 8), all zeros
        ```
        """
        del key
        check_input(type(self).__name__, x, self.num_spatial_dims)
        return _apply_taps(x, self.weight, PADDING_MODES[self.padding_mode])


def _correlate(window: Any, weight: Array) -> Array:
    return jnp.sum(window * weight)


@ft.partial(jax.jit, static_argnums=2)
def _apply_taps(x: Array, weight: Array, boundary: str) -> Array:
    """Every channel of `x` correlated with `weight` ("same" padding); one
    compiled program, also when called eagerly."""
    stencil = kmap(
        _correlate,
        kernel_size=(1, *weight.shape),
        padding=(0, *("same",) * weight.ndim),
        boundary=boundary,
    )
    return cast(Array, stencil(x, weight[None]))
