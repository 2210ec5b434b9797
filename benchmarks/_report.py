"""Bars, verdicts, table rows and the markdown output."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass

import jax


TIMING_HEADERS = (
    "case",
    "variant",
    "median ms",
    "ratio to hand-written",
    "ratio to lax",
    "bar",
    "met?",
)


@dataclass(frozen=True)
class Bar:
    """`variant`'s measure over `reference`'s must stay under `limit`.

    `limit=None` leaves only the `target` (or, without one, just shows the
    ratio); `strict` makes the limit exclusive ("faster than": `< 1`).
    `same_program`: also say whether the two compile to the same program (a
    ratio between identical programs differs from 1 only by noise; the bar
    is still judged on the ratio).
    """

    variant: str
    reference: str
    limit: float | None
    target: float | None = None
    strict: bool = False
    same_program: bool = False

    def judge(self, ratio: float, same: bool | None = None) -> Verdict:
        """The verdict for a measured `ratio` (`same`: whether the programs
        are the same, when `same_program` asked)."""
        parts = [f"{ratio:.2f}× {self.reference}"]
        met = None
        if self.limit is not None:
            met = ratio < self.limit if self.strict else ratio <= self.limit
            parts.append(f"{'<' if self.strict else '≤'} {self.limit:g}×")
        target_met = None
        if self.target is not None:
            target_met = ratio <= self.target
            parts.append(f"(target ≤ {self.target:g}×)")
        if same is not None:
            parts.append("(same compiled program)" if same else "(other program)")
        return Verdict(" ".join(parts), met, target_met)


@dataclass(frozen=True)
class Verdict:
    """A bar applied to a measurement: its text and whether it holds."""

    text: str
    met: bool | None
    target_met: bool | None

    @property
    def cell(self) -> str:
        """The `met?` cell: `yes`/`NO` for the limit, then the target."""
        parts = []
        if self.met is not None:
            parts.append("yes" if self.met else "NO")
        if self.target_met is not None:
            parts.append("target met" if self.target_met else "target missed")
        return ", ".join(parts)


@dataclass(frozen=True)
class Row:
    """One table row: its cells and the verdicts of the bars it carries."""

    cells: tuple[str, ...]
    verdicts: tuple[Verdict, ...] = ()


@dataclass(frozen=True)
class Table:
    """Rows sharing `headers`; tables with equal headers print as one."""

    headers: tuple[str, ...]
    rows: tuple[Row, ...]


THROUGHPUT_HEADERS = (
    "case",
    "variant",
    "MiB per call",
    "median ms",
    "T_eff GB/s",
    "copy GB/s",
    "T_eff / copy",
    "target",
    "met?",
)
GB = 1e9
MIB = 2**20


@dataclass(frozen=True)
class Traffic:
    """What a memory-bound case must move per call, for its effective memory
    throughput (ParallelStencil's `T_eff`): `moved` bytes / time.

    - `moved`: bytes of the fields read and written once per call (a lower
      bound on what any implementation moves; temporaries do not count).
    - `copy`, `copy_moved`: the case's copy variant (an elementwise pass over
      arrays like the case's, in the same process) and the bytes it reads and
      writes per call: its bytes / time is the bandwidth a stencil can reach.
    - `variants`: the variants reported; `judged`: those held to `target`
      (`T_eff` at least this fraction of the copy's bandwidth).
    """

    moved: int
    copy: str
    copy_moved: int
    variants: tuple[str, ...]
    judged: tuple[str, ...]
    target: float = 0.9

    def judge(self, fraction: float) -> Verdict:
        """The target's verdict on a measured fraction of the copy's bandwidth."""
        text = f"T_eff {fraction:.2f} of copy (target ≥ {self.target:g})"
        return Verdict(text, None, fraction >= self.target)


def throughput_table(case: str, traffic: Traffic, medians: dict[str, float]) -> Table:
    """`T_eff` of `traffic`'s variants (those timed) against the copy's
    bandwidth: one row each; empty without the copy's time."""
    if traffic.copy not in medians:
        return Table(THROUGHPUT_HEADERS, ())
    copy = traffic.copy_moved / medians[traffic.copy]
    rows = []
    for name in traffic.variants:
        if name not in medians:
            continue
        t_eff = traffic.moved / medians[name]
        verdicts = [traffic.judge(t_eff / copy)] if name in traffic.judged else []
        cells = (
            case,
            name,
            f"{traffic.moved / MIB:,.1f}",
            ms(medians[name]),
            f"{t_eff / GB:.1f}",
            f"{copy / GB:.1f}",
            f"{t_eff / copy:.2f}",
        )
        rows.append(Row(cells + verdict_cells(verdicts), tuple(verdicts)))
    return Table(THROUGHPUT_HEADERS, tuple(rows))


def ms(seconds: float) -> str:
    """Seconds as a millisecond cell."""
    return f"{seconds * 1e3:,.2f}"


def ratio(value: float | None) -> str:
    """A ratio cell (`—` when there is no reference)."""
    return "—" if value is None else f"{value:.2f}×"


def verdict_cells(verdicts: Sequence[Verdict]) -> tuple[str, str]:
    """The `bar` and `met?` cells of a row."""
    if not verdicts:
        return "", ""
    return (
        "; ".join(v.text for v in verdicts),
        "; ".join(v.cell for v in verdicts),
    )


def timing_row(
    case: str,
    variant: str,
    median: str,
    to_hand: float | None,
    to_lax: float | None,
    verdicts: Sequence[Verdict] = (),
) -> Row:
    """A row of the timing table (`median` already formatted)."""
    cells = (case, variant, median, ratio(to_hand), ratio(to_lax))
    return Row(cells + verdict_cells(verdicts), tuple(verdicts))


def machine() -> str:
    """Processor, CPU count and load, JAX version and backend, and the device."""
    device = jax.devices()[0]
    processor = platform.processor() or platform.machine()
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.2f}"
    return (
        f"{processor}, {os.cpu_count()} CPUs{load}, jax {jax.__version__}, "
        f"backend {jax.default_backend()} ({device.device_kind}, "
        f"{jax.device_count()} device(s))"
    )


def markdown(table: Table) -> str:
    """`table` as a markdown table."""
    lines = [
        "| " + " | ".join(table.headers) + " |",
        "|" + "---|" * len(table.headers),
    ]
    lines += ["| " + " | ".join(row.cells) + " |" for row in table.rows]
    return "\n".join(lines)


def missed(tables: Sequence[Table]) -> list[str]:
    """One line per bar or target missed, naming its row."""
    lines = []
    for table in tables:
        for row in table.rows:
            for verdict in row.verdicts:
                if verdict.met is False:
                    kind = "bar"
                elif verdict.target_met is False:
                    kind = "target"
                else:
                    continue
                case, variant = row.cells[:2]
                lines.append(f"- {kind} missed: {case}, {variant}: {verdict.text}")
    return lines


def to_json(tables: Sequence[Table]) -> list:
    """Tables as plain JSON data (for a case run in a child process)."""
    return [
        {
            "headers": list(table.headers),
            "rows": [
                {
                    "cells": list(row.cells),
                    "verdicts": [
                        [verdict.text, verdict.met, verdict.target_met]
                        for verdict in row.verdicts
                    ],
                }
                for row in table.rows
            ],
        }
        for table in tables
    ]


def from_json(data: list) -> list[Table]:
    """The inverse of `to_json`."""
    return [
        Table(
            tuple(table["headers"]),
            tuple(
                Row(tuple(row["cells"]), tuple(Verdict(*v) for v in row["verdicts"]))
                for row in table["rows"]
            ),
        )
        for table in data
    ]
