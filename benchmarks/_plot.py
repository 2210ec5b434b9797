"""A picture of the results: eqx_stencil's ratio to the reference of each case."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ._report import Table
from ._runtime import ES


REFERENCES = ("ratio to hand-written", "ratio to lax")
TIMED = "median ms"  # the header of the timing tables
TICKS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def _ratio(cell: str) -> float | None:
    """`0.18×` -> 0.18; `—` or any other text -> None."""
    try:
        return float(cell.rstrip("×").replace(",", ""))
    except ValueError:
        return None


def ratios(tables: Sequence[Table]) -> list[tuple[str, str, float]]:
    """`(case, reference, ratio)` for every eqx_stencil row: to the
    hand-written version where the case has one, else to lax."""
    out = []
    for table in tables:
        columns = [table.headers.index(h) for h in REFERENCES if h in table.headers]
        if not columns or TIMED not in table.headers:
            continue  # memory tables: their ratios are not times
        variant = table.headers.index("variant")
        for row in table.rows:
            if row.cells[variant] != ES:
                continue
            found = [(table.headers[c], _ratio(row.cells[c])) for c in columns]
            found = [(name, value) for name, value in found if value is not None]
            if found:
                name, value = found[0]
                reference = name.removeprefix("ratio to ")
                out.append((row.cells[0], reference, value))
    return out


def plot(tables: Sequence[Table], path: Path) -> None:
    """Horizontal bars of `ratios(tables)` on a log axis, 1× marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = ratios(tables)
    if not found:
        return
    labels = [f"{case} (vs {reference})" for case, reference, _ in found]
    values = [value for _, _, value in found]
    fig, ax = plt.subplots(figsize=(11, 0.35 * len(found) + 1.2), layout="constrained")
    colours = ["#3a7" if value <= 1 else "#d84" for value in values]
    ax.barh(range(len(found)), values, color=colours)
    ax.set_yticks(range(len(found)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    low, high = min([*values, 1.0]) / 1.5, max([*values, 1.0]) * 1.5
    ax.set_xlim(low, high)
    ticks = [tick for tick in TICKS if low <= tick <= high]
    ax.set_xticks(ticks, [f"{tick:g}×" for tick in ticks])
    ax.minorticks_off()
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xlabel("eqx_stencil time / reference time (lower is faster)")
    fig.suptitle("eqx_stencil against hand-written jnp (or lax, eqx.nn)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
