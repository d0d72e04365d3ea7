"""The CLI's contract without a server: bad options are one line on stderr and exit 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from online_uuid.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args",
    [
        ["start", "-t", "x", "--uuid", "v9", "--dsn", "host=/nonexistent"],
        ["start", "-t", "x", "--lock-timeout", "0", "--dsn", "host=/nonexistent"],
        ["backfill", "--min-batch-size", "10", "--max-batch-size", "5", "--dsn", "host=/nonexistent"],
        ["throttle", "--dsn", "host=/nonexistent"],
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_unreachable_server_is_exit_1_without_password() -> None:
    result = runner.invoke(
        app, ["status", "--dsn", "postgresql://me:s3cret@127.0.0.1:1/db?connect_timeout=1"]
    )
    assert result.exit_code == 1
    assert "s3cret" not in result.stderr and "***" in result.stderr
    assert result.stderr.count("\n") == 1


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    for command in (
        "plan",
        "start",
        "backfill",
        "status",
        "pause",
        "resume",
        "throttle",
        "verify",
        "cutover",
        "rollback",
        "finalize",
        "demo",
    ):
        assert command in result.stdout
