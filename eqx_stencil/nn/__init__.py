"""Equinox layers built from stencils.

Channel-first like `eqx.nn` (inputs of shape `(channels, *spatial)`; `jax.vmap`
for batches), with the same constructors, field names and shapes as their
`eqx.nn` counterparts, so weights move between the two with `eqx.tree_at`.
"""

from ._blur import AverageBlur as AverageBlur
from ._conv import (
    Conv as Conv,
    Conv1d as Conv1d,
    Conv2d as Conv2d,
    Conv3d as Conv3d,
)
from ._finite_difference import (
    SCHEMES as SCHEMES,
    FiniteDifference as FiniteDifference,
)
from ._pool import (
    AvgPool as AvgPool,
    AvgPool1d as AvgPool1d,
    AvgPool2d as AvgPool2d,
    AvgPool3d as AvgPool3d,
    MaxPool as MaxPool,
    MaxPool1d as MaxPool1d,
    MaxPool2d as MaxPool2d,
    MaxPool3d as MaxPool3d,
)
