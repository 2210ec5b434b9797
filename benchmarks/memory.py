"""Peak memory of the 4096² Laplacian: one fresh process per variant.

Each child process imports the same modules (eqx_stencil, and kernex when
installed), creates the input, then makes the first call and reports its peak
RSS (the high-water mark of the whole process, import included),
the part of it the first call added, and XLA's own accounting of the compiled
program (`memory_analysis()`).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import jax

from . import laplacian
from ._report import Bar, Row, Table, verdict_cells
from ._runtime import ES, HAND, KERNEX, optional_kernex
from ._timing import Budget


N = 4096
MIB = 2**20
ROOT = Path(__file__).resolve().parents[1]
HEADERS = (
    "case",
    "variant",
    "peak RSS MiB",
    "first-call RSS MiB",
    "XLA temp MiB",
    "XLA arg+out+temp MiB",
    "ratio to hand-written (RSS / XLA)",
    "bar",
    "met?",
)
MAKERS = {
    ES: laplacian.es_laplacian,
    HAND: laplacian.hand_laplacian,
    KERNEX: laplacian.kernex_laplacian,
}
RSS_BAR = Bar(ES, "hand peak RSS", limit=1.3)
XLA_BAR = Bar(ES, "hand XLA bytes", limit=1.3)


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes.

    On Linux `ru_maxrss` survives `exec`: a child started by a big parent
    reports the parent's peak. `VmHWM` (the high-water mark of this process's
    own address space) does not, so it is read where it exists.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def child(variant: str, n: int) -> None:
    """In a fresh process: first call of `variant`, then print its memory as JSON."""
    optional_kernex()  # every child imports the same modules
    x = jax.block_until_ready(laplacian.field(n))
    before = peak_rss_bytes()
    fn = jax.jit(MAKERS[variant]())
    jax.block_until_ready(fn(x))
    peak = peak_rss_bytes()
    stats = fn.lower(x).compile().memory_analysis()
    xla = {}
    if stats is not None:
        xla = {
            "temp": stats.temp_size_in_bytes,
            "total": stats.temp_size_in_bytes
            + stats.argument_size_in_bytes
            + stats.output_size_in_bytes,
        }
    print(json.dumps({"peak": peak, "call": peak - before, **xla}))


def measure(variant: str, n: int) -> dict[str, int]:
    """Run `child` in a fresh interpreter and return what it reports."""
    code = f"from benchmarks.memory import child; child({variant!r}, {n})"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory child {variant!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(stats: dict[str, int], key: str) -> str:
    """A MiB cell (`n/a` when the backend gives no XLA accounting)."""
    return f"{stats[key] / MIB:,.1f}" if key in stats else "n/a"


def _row(name: str, stats: dict[str, int], hand: dict[str, int]) -> Row:
    """One variant's row, with its ratios to the hand-written variant."""
    rss_ratio = stats["peak"] / hand["peak"]
    xla_ratio = stats["total"] / hand["total"] if "total" in stats else None
    ratios = f"{rss_ratio:.2f}× / " + (
        "n/a" if xla_ratio is None else f"{xla_ratio:.2f}×"
    )
    verdicts = []
    if name == ES:
        verdicts.append(RSS_BAR.judge(rss_ratio))
        if xla_ratio is not None:
            verdicts.append(XLA_BAR.judge(xla_ratio))
    cells = (
        f"memory Laplacian {N}²",
        name,
        _mib(stats, "peak"),
        _mib(stats, "call"),
        _mib(stats, "temp"),
        _mib(stats, "total"),
        ratios,
    )
    return Row(cells + verdict_cells(verdicts), tuple(verdicts))


def run(budget: Budget) -> Table:
    """Memory of each variant, each measured once in its own process."""
    del budget  # nothing to repeat: a process measures one first call
    names = [ES, HAND] + ([KERNEX] if optional_kernex() is not None else [])
    stats = {name: measure(name, N) for name in names}
    return Table(HEADERS, tuple(_row(name, stats[name], stats[HAND]) for name in names))
