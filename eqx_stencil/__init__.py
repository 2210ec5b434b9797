"""eqx_stencil: differentiable stencil computations in JAX, as Equinox modules."""

from . import nn as nn
from ._iterate import iterate as iterate
from ._stencil import (
    Stencil as Stencil,
    kmap as kmap,
    kscan as kscan,
    smap as smap,
    sscan as sscan,
)


__version__ = "0.1.0"
