"""Developer sessions: `nox -l` lists them, `nox -s NAME` runs one."""

import shutil
from pathlib import Path

import nox


nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


CPU = {"JAX_PLATFORMS": "cpu"}
# The suite compiles thousands of small programs and runs each once, so XLA's
# CPU code generation is most of its time. Two flags make it 2-3x cheaper
# (suite: 4 min 28 s -> 2 min 46 s, 2 cores): LLVM at -O0, and the older LLVM
# IR emitters for fusions instead of the MLIR fusion emitters, which compile
# 2.5x faster at -O0. XLA's HLO passes run as usual: the one difference in
# the compiled HLO is that a lone instruction is not wrapped in a fusion of
# its own, and every test that inspects compiled HLO also passes with XLA's
# defaults. tests_thorough compiles with the defaults, as users' programs are.
FAST_XLA = ["--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"]
FAST_COMPILE = {**CPU, "XLA_FLAGS": " ".join(FAST_XLA)}
# Two workers that steal tests from each other; each hypothesis test draws a
# quarter of its max_examples (tests_thorough draws all of them); a fixed
# hypothesis seed makes CI reproducible (plain `pytest` draws fresh examples
# every run). conftest.py prints one line per finished file; the ten slowest
# tests close the report.
WORKERS = ["-n", "2", "--dist", "worksteal"]
REPORT = ["-q", "--hypothesis-seed=0", "--durations=10"]
FAST = [*WORKERS, *REPORT, "--examples-scale=0.25"]
# tests_thorough also checks every annotation of the package at run time
# (jaxtyping + beartype: about a fifth of the run time, as jaxtyping decorates
# each nested function every time its enclosing function runs).
TYPED = ["--jaxtyping-packages=eqx_stencil,beartype.beartype"]
THOROUGH = [*WORKERS, *REPORT, *TYPED, "--thorough", "--examples-scale=1"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite on the CPU, quickly: a quarter of the hypothesis
    examples, no `thorough` breadth, XLA at -O0, no run-time type checks."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or FAST), env=FAST_COMPILE)


@nox.session(python=PYTHON)
def tests_thorough(session: nox.Session) -> None:
    """The hypothesis tests with their declared examples (4x `tests`) and the
    tests marked `thorough` (breadth: more modes, layers, meshes), compiled as
    users' programs are (no -O0), with run-time type checks; CI runs it too."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or THOROUGH), env=CPU)


@nox.session(python=PYTHON, venv_params=["--system-site-packages"])
def tests_gpu(session: nox.Session) -> None:
    """Run the test suite on a CUDA GPU (skips when there is none)."""
    if shutil.which("nvidia-smi") is None:
        session.skip("no CUDA GPU here (nvidia-smi not found): nothing to run")
    # The system's CUDA-enabled jax (if any) is visible in this virtualenv.
    session.install("-e", ".[test]")
    probe = "import jax; print(jax.default_backend())"
    backend = session.run("python", "-c", probe, silent=True, success_codes=[0, 1])
    if not isinstance(backend, str) or backend.strip() != "gpu":
        session.error(
            "a GPU is present but jax has no CUDA backend here: install a CUDA jax, "
            'e.g. pip install "jax[cuda12]", then rerun nox -s tests_gpu.'
        )
    # One process: two would each claim most of the GPU's memory.
    args = session.posargs or [*REPORT, "--examples-scale=0.25"]
    session.run("pytest", *args, env={"JAX_PLATFORMS": "cuda"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """pyright over the package."""
    session.install("-e", ".[test]", "pyright[nodejs]")
    session.run("pyright")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site with mkdocs --strict (into site/)."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


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
        env={**CPU, **allocator},
    )


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Run every example in smoke mode, its picture into a temporary folder."""
    session.install("-e", ".[examples]")
    tmp = Path(session.create_tmp())
    for script in sorted(Path("examples").glob("*.py")):
        # quickstart.py is a plain demo: it takes no --smoke/--out flags.
        if script.name == "quickstart.py":
            flags = []
        else:
            flags = ["--smoke", "--out", str(tmp / f"{script.stem}.png")]
        session.run("python", str(script), *flags, env=CPU)
