"""Loads SQL templates from `sql_templates/` (inside the wheel, or the repo root in a checkout)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from psycopg import sql


@cache
def _text(name: str) -> str:
    packaged = resources.files("online_uuid") / "sql_templates" / name
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parents[2] / "sql_templates" / name
    return checkout.read_text(encoding="utf-8")


def render(name: str, **parts: Any) -> sql.Composed:
    """The template with each placeholder filled by an Identifier, Literal or SQL fragment."""
    return sql.SQL(_text(name)).format(**parts)
