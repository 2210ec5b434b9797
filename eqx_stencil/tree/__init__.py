"""`treeclass` for Equinox: tree math, masks and model visualisation as mixins."""

from ._math import TreeMath as TreeMath
from ._treeclass import static_field as static_field, treeclass as treeclass
from ._viz import (
    TreeViz as TreeViz,
    summary as summary,
    tree_box as tree_box,
    tree_diagram as tree_diagram,
    tree_mermaid as tree_mermaid,
)
