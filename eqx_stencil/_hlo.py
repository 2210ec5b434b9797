"""Collectives in a compiled program's HLO text (private; for tests and benchmarks).

A sharded stencil promises what it sends: one collective-permute per sharded
axis and direction, carrying exactly the halo, and no gather. These helpers
read that off `jax.jit(f).lower(*args).compile().as_text()`. Synchronous
collectives (`collective-permute(...)`, as on CPU) and asynchronous ones
(`collective-permute-start(...)` / `-done`, as on GPU) are both counted once.
"""

import math
import re


COLLECTIVES = (
    "collective-permute",
    "all-gather",
    "all-to-all",
    "all-reduce",
    "reduce-scatter",
)

_ITEM_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_OPCODE = re.compile(r"\s([a-z][\w\-]*)\(")
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")


def _results(hlo_text: str, name: str) -> list[tuple[str, bool]]:
    """The result shapes of the instructions of `hlo_text` that run collective
    `name`, each with whether it is an async start."""
    found = []
    for line in hlo_text.splitlines():
        if "=" not in line:
            continue
        body = line.split("=", 1)[1]
        match = _OPCODE.search(body)
        if match is not None and match.group(1) in (name, f"{name}-start"):
            found.append((body[: match.start()], match.group(1) != name))
    return found


def count_collectives(hlo_text: str) -> dict[str, int]:
    """How many times each collective appears in a compiled program.

    **Arguments:**

    - `hlo_text`: the program, as `jax.jit(f).lower(*args).compile().as_text()`.

    **Returns:**

    A dict from each name in `COLLECTIVES` (`"collective-permute"`,
    `"all-gather"`, `"all-to-all"`, `"all-reduce"`, `"reduce-scatter"`) to its
    number of instructions (an async start/done pair counts once).

    **Example:**

    ```python
    from eqx_stencil._hlo import count_collectives

    line = "  %cp = f32[1,8]{1,0} collective-permute(%a), channel_id=1"
    count_collectives(line)["collective-permute"]  # 1
    ```
    """
    return {name: len(_results(hlo_text, name)) for name in COLLECTIVES}


def collective_permute_bytes(hlo_text: str) -> int:
    """The bytes one device sends by collective-permute in one run of a program.

    **Arguments:**

    - `hlo_text`: the program, as `jax.jit(f).lower(*args).compile().as_text()`
      (SPMD: shapes are per device).

    **Returns:**

    The total size of the arrays its collective-permutes send, in bytes.

    **Example:**

    ```python
    from eqx_stencil._hlo import collective_permute_bytes

    line = "  %cp = f32[1,8]{1,0} collective-permute(%a), channel_id=1"
    collective_permute_bytes(line)  # 32
    ```
    """
    total = 0
    for shape, start in _results(hlo_text, "collective-permute"):
        # A start's result is (operand, output, contexts): count the operand.
        arrays = [(t, d) for t, d in _ARRAY.findall(shape) if d or not start]
        size = 0
        for dtype, dims in arrays:
            if dtype not in _ITEM_BYTES:
                raise ValueError(f"unknown HLO element type {dtype!r} in {shape!r}")
            size += _ITEM_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
        total += size // 2 if start else size
    return total
