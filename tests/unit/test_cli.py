"""The CLI's contract without a server: bad options are one line on stderr and exit 2."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
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
        # the shared backfill options reach the settings builder of each command
        ["start", "-t", "x", "--workers", "0", "--dsn", "host=/nonexistent"],
        ["backfill", "--nice-ratio", "-1", "--dsn", "host=/nonexistent"],
        ["backfill", "--target-batch-ms", "0", "--dsn", "host=/nonexistent"],
        ["backfill", "--max-latency-impact", "0.8", "--dsn", "host=/nonexistent"],
        ["start", "-t", "x", "--max-latency-impact", "1", "--dsn", "host=/nonexistent"],
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


COMMANDS = (
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
)


def _commands() -> dict[str, Any]:
    """The click commands behind the app (typer >= 0.20 vendors click: no import of it here)."""
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _options(command: str) -> list[Any]:
    return [p for p in _commands()[command].params if p.param_type_name == "option"]


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "100"})
    # The first word of each row of the Commands panel: exactly the commands, none hidden or extra.
    panel = result.stdout.split("Commands")[1]
    listed = [m.group(1) for m in re.finditer(r"^[│|] (\w+) ", panel, flags=re.MULTILINE)]
    assert sorted(listed) == sorted(COMMANDS)
    assert sorted(_commands()) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_a_help_text(command: str) -> None:
    missing = [p.opts[0] for p in _options(command) if not (p.help or "").strip()]
    assert missing == []


def test_shared_options_say_the_same_everywhere() -> None:
    """An option that several commands take is declared once: same flag, same help."""
    seen: dict[str, str | None] = {}
    drift = []
    for command in COMMANDS:
        if command == "demo":  # its --dsn means a scratch schema, on purpose
            continue
        for p in _options(command):
            doc = p.help
            if seen.setdefault(p.opts[0], doc) != doc:
                drift.append(f"{command} {p.opts[0]}")
    assert drift == []


def test_json_output_never_wraps_long_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--json` is for machines: a long message stays one valid JSON string (rich < 10.13 broke it)."""
    import io
    import json

    from rich.console import Console

    from online_uuid import cli

    buf = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buf, width=160))
    doc = {"warning": "a role may write the child but not read the parent; " * 8}
    cli._emit(doc, True, lambda: None)
    assert json.loads(buf.getvalue()) == doc
