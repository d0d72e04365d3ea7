"""The online-uuid CLI in a process of its own or in this one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import suppress


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "online_uuid.cli", *args]


def _env() -> dict[str, str]:
    """The environment minus online-uuid's own settings, so only the command line counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONLINE_UUID_")}
    env.pop("DATABASE_URL", None)
    env["NO_COLOR"] = "1"
    return env


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `online-uuid ARGS` in a new process; returns it with exit code, stdout and stderr."""
    return subprocess.run(cli_argv(*args), capture_output=True, text=True, timeout=timeout, env=_env())


def invoke_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `online-uuid ARGS` in this process (faster; for tests that need no process of its own).

    Only the command line counts (ONLINE_UUID_* unset), and the CLI's log setup, pointed at the
    runner's stderr that is closed afterwards, is undone.
    """
    import logging

    import structlog
    from typer.testing import CliRunner

    from online_uuid.cli import app

    saved, handlers = structlog.get_config(), list(logging.root.handlers)
    try:
        unset = dict.fromkeys(k for k in os.environ if k.startswith("ONLINE_UUID_"))
        result = CliRunner().invoke(app, list(args), env=unset)
    finally:
        structlog.configure(**saved)
        logging.root.handlers[:] = handlers
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def spawn_cli(*args: str) -> subprocess.Popen[str]:
    """Start `online-uuid ARGS` in a new process (for tests that kill it or run two at once)."""
    return subprocess.Popen(
        cli_argv(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )


def kill9(proc: subprocess.Popen[str]) -> None:
    """SIGKILL: no cleanup of any kind runs in the process."""
    with suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines of a CLI run's stderr (log lines are left out)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def cli_in_process(*args: str, dsn: str) -> tuple[int, str, str]:
    """`online-uuid ARGS --dsn DSN` in this process, as (exit code, stdout, stderr)."""
    done = invoke_cli(*args, "--dsn", dsn)
    return done.returncode, done.stdout, done.stderr
