"""Derived names: stable, distinct, and never over PostgreSQL's 63-byte identifier limit."""

from __future__ import annotations

from online_uuid import naming
from online_uuid.model import TableRef


def test_short_names_are_kept() -> None:
    assert naming.shadow_column("id") == "id_uuid"
    assert naming.retired_column("connector_id") == "connector_id_int"


def test_long_names_are_shortened_with_a_stable_hash() -> None:
    col = "c" * 62
    shadow, retired = naming.shadow_column(col), naming.retired_column(col)
    assert len(shadow.encode()) <= 63 and len(retired.encode()) <= 63
    assert shadow != retired
    assert naming.shadow_column(col) == shadow  # deterministic across runs


def test_multibyte_names_are_cut_on_character_boundaries() -> None:
    col = "a" + "é" * 40  # 81 bytes: a cut at an even byte count splits an é
    shadow = naming.shadow_column(col)
    assert len(shadow.encode()) <= 63
    head, digest = shadow.rsplit("_", 1)
    assert col.startswith(head) and len(head) == 27  # whole characters only, none half-cut or replaced
    assert len(digest) == 8 and digest != naming.retired_column(col).rsplit("_", 1)[1]


def test_trigger_names_differ_per_table_and_column() -> None:
    a, b = TableRef("public", "t"), TableRef("other", "t")
    long_table = TableRef("public", "x" * 63)
    assert naming.fk_trigger(a, "p") != naming.fk_trigger(a, "q")
    assert naming.fk_trigger(long_table, "p") != naming.fk_trigger(long_table, "q")
    assert naming.key_trigger(a, "id") == naming.key_trigger(
        b, "id"
    )  # same table name: same trigger name is fine
    assert naming.unique_index(TableRef("s", "y" * 63), "id") != naming.unique_index(
        TableRef("t", "y" * 63), "id"
    )


def test_application_name_fits() -> None:
    assert len(naming.application_name("m" * 100, "backfill")) <= 63


def test_before_triggers_sort_after_application_triggers_and_the_fixup_before_ri_checks() -> None:
    """Triggers of one event fire in byte order of their names."""
    t = TableRef("public", "x" * 63)
    for name in (naming.key_trigger(t, "id"), naming.fk_trigger(t, "pid")):
        last = naming.fires_last(name)
        assert len(last.encode()) <= 63 and last.startswith("~")
        assert last.encode() > b"zz_last_set_pid"
    fix = naming.fk_fixup_trigger(t, "pid")
    assert len(fix.encode()) <= 63
    assert fix.encode() < b"RI_ConstraintTrigger_c_16384"
