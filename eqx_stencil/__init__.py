"""eqx_stencil: differentiable stencil computations in JAX, as Equinox modules."""

import importlib.metadata

from . import nn as nn
from ._iterate import iterate as iterate
from ._stencil import (
    Map as Map,
    Scan as Scan,
    ShapeMap as ShapeMap,
    ShapeScan as ShapeScan,
    Stencil as Stencil,
    kmap as kmap,
    kscan as kscan,
    smap as smap,
    sscan as sscan,
)


__version__ = importlib.metadata.version("eqx_stencil")
