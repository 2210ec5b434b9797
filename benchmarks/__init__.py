"""Benchmarks of `eqx_stencil` against hand-written `jnp`, `lax` and kernex.

Run `python -m benchmarks` (or `nox -s bench`); `--quick` for a smoke run,
`--case NAME` for one case. Every case times its variants side by side in one
process, interleaved round by round, and reports medians and the ratios the
performance contract (docs/design.md) sets bars on.
"""
