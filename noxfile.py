"""Developer sessions: `nox -l` lists them, `nox -s NAME` runs one."""

import nox


nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite on the CPU (jaxtyping + beartype checks on)."""
    session.install("-e", ".[test]")
    # A fixed hypothesis seed makes the CI run reproducible; plain `pytest`
    # draws fresh examples on every run.
    args = session.posargs or ["-q", "--hypothesis-seed=0"]
    session.run("pytest", *args, env={"JAX_PLATFORMS": "cpu"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """pyright over the package."""
    session.install("-e", ".[test]", "pyright")
    session.run("pyright")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: ratios to hand-written jnp, lax primitives and kernex."""
    session.install("-e", ".[bench]")
    # Large buffers stay on glibc's heap instead of fresh mmaps, so no variant
    # pays page faults on its output buffers by chance (seen as 5x swings).
    allocator = {
        "MALLOC_MMAP_THRESHOLD_": "4294967296",
        "MALLOC_TRIM_THRESHOLD_": "4294967296",
    }
    session.run(
        "python",
        "-m",
        "benchmarks",
        *session.posargs,
        env={"JAX_PLATFORMS": "cpu", **allocator},
    )
