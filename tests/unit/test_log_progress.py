"""Log redaction and the log-line progress reporter."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr
from typing import Any

import pytest
import structlog

from online_uuid import log
from online_uuid.backfill.progress import JobProgress, LogProgress, NullProgress, make_progress


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("connect host=db password=s3cret user=u", "s3cret"),
        ("dsn host=db password='a b c' port=5", "a b c"),
        ("postgresql://alice:hunter2@db:5432/app failed", "hunter2"),
        ("PASSWORD = topsecret", "topsecret"),
    ],
)
def test_redact_text(text: str, leak: str) -> None:
    out = log.redact_text(text)
    assert leak not in out and "***" in out


def test_redact_keeps_plain_text() -> None:
    assert log.redact_text("host=db user=u dbname=x") == "host=db user=u dbname=x"
    assert log.redact_text("postgresql://alice@db/app") == "postgresql://alice@db/app"


def _json_lines(emit: Any) -> list[dict[str, Any]]:
    buf = io.StringIO()
    with redirect_stderr(buf):
        log.configure("json", "info")
        emit(structlog.get_logger("t"))
    structlog.reset_defaults()
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_logs_go_to_stderr_redacted() -> None:
    lines = _json_lines(
        lambda lg: lg.info(
            "connecting password=x1", dsn="postgres://u:p4ss@h/d", nested={"dsns": ["host=a password=zz"]}
        )
    )
    assert len(lines) == 1
    text = json.dumps(lines[0])
    assert "x1" not in text and "p4ss" not in text and "zz" not in text
    assert lines[0]["level"] == "info" and "timestamp" in lines[0]


def test_level_filters() -> None:
    assert _json_lines(lambda lg: lg.debug("hidden")) == []
    with pytest.raises(ValueError):
        log.configure("json", "loud")


def test_log_progress_rate_limits_and_clamps(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "online_uuid.backfill.progress.log",
        type("L", (), {"info": lambda self, msg, **kw: seen.append(kw)})(),
    )
    now = [0.0]
    p = LogProgress(every_s=5, clock=lambda: now[0])
    p.job(JobProgress("j", "t.c", fraction=1.7, rows_done=10, rows_remaining=0, rate=2.0, eta_s=0))
    p.job(JobProgress("j", "t.c", fraction=0.5))  # within 5 s: dropped
    now[0] = 6.0
    p.job(JobProgress("j", "t.c", fraction=0.6, eta_s=3725))
    p.job(JobProgress("j", "t.c", fraction=1.0, done=True))  # the end always shows
    assert [s["percent"] for s in seen] == [100.0, 60.0, 100.0]
    assert seen[1]["eta"] == "1:02:05"


def test_factories() -> None:
    assert isinstance(make_progress(False), LogProgress)
    NullProgress().job(JobProgress("j", "x"))


def test_rich_progress_never_above_100_percent() -> None:
    from online_uuid.backfill.progress import RichProgress

    buf = io.StringIO()
    with redirect_stderr(buf):
        p = RichProgress()
        p.job(JobProgress("j", "t.c", fraction=3.0, rows_done=5, rate=1.0, eta_s=1))
        p.job(JobProgress("k", "t.d", fraction=-1.0))
        p.note("barrier", on="pid 1")
        tasks = list(p._bars.tasks)
        p.close()
    assert [t.completed for t in tasks] == [1000, 0]
    assert all(t.percentage <= 100 for t in tasks)
