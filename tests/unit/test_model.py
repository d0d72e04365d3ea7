"""The phase machine and the plan document."""

from __future__ import annotations

import json

import pytest

from online_uuid.errors import RefusedError
from online_uuid.model import (
    ACTIVE_PHASES,
    ALLOWED,
    ForeignKeyConversion,
    IndexTwin,
    KeyConversion,
    PartitionIndex,
    PartitionNode,
    Phase,
    Plan,
    TableRef,
    backfill_jobs,
    can_move,
)
from online_uuid.naming import retired_column, shadow_column
from online_uuid.settings import StartSettings


def sample_plan() -> Plan:
    parent = TableRef("public", "parent")
    child = TableRef("App Data", "Child")
    keys = (
        KeyConversion(
            parent, "id", "integer", shadow_column("id"), retired_column("id"), "parent_pkey", rows=10
        ),
    )
    fks = (
        ForeignKeyConversion(
            "child_fk",
            child,
            "parent_id",
            shadow_column("parent_id"),
            retired_column("parent_id"),
            parent,
            "id",
            "c",
            "a",
            batch_column="id",
        ),
    )
    return Plan(keys=keys, foreign_keys=fks)


def test_plan_round_trips_through_json() -> None:
    plan = sample_plan()
    doc = json.loads(json.dumps(plan.to_json()))
    assert Plan.from_json(doc) == plan


def partitioned_plan() -> Plan:
    base = sample_plan()
    root, leaf = TableRef("public", "pay"), TableRef("Sales", "Pay 2020")
    nodes = (
        PartitionNode(root, root, leaf=False, level=0, constraint="pay_fk"),
        PartitionNode(leaf, root, constraint="pay_fk", inherited=True, batch_column="ctid", rows=5),
    )
    fk = ForeignKeyConversion(
        "pay_fk", root, "parent_id", "parent_id_uuid", "parent_id_int", TableRef("public", "parent"), "id",
        "a", "a", partitioned=True, partitions=nodes,
    )  # fmt: skip
    ix = IndexTwin(
        root, "pay_parent", "pay_parent_ou", ("parent_id",), partitioned=True,
        partitions=(PartitionIndex(leaf, "pay_2020_parent_id_idx", "pay_2020_parent_id_idx_ou", "pay_parent"),),
    )  # fmt: skip
    return Plan(keys=base.keys, foreign_keys=(fk,), indexes=(ix,))


def test_a_partitioned_child_round_trips_and_gets_a_job_per_leaf() -> None:
    plan = partitioned_plan()
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    jobs = backfill_jobs(plan)
    assert [(j.job_id, j.table, j.batch_column) for j in jobs if j.kind == "fk"] == [
        ("fk:public.pay.parent_id@Sales.Pay 2020", TableRef("Sales", "Pay 2020"), "ctid")
    ]
    assert plan.tables() == [TableRef("public", "parent"), TableRef("public", "pay")]  # LOCK recurses


def test_a_plan_stored_before_partitions_loads() -> None:
    doc = sample_plan().to_json()
    for f in doc["foreign_keys"]:
        del f["partitioned"], f["partitions"]
    assert Plan.from_json(doc) == sample_plan()


def test_tables_are_locked_in_one_sorted_order() -> None:
    assert sample_plan().tables() == [TableRef("App Data", "Child"), TableRef("public", "parent")]


def test_backfill_jobs_put_keys_before_foreign_keys() -> None:
    jobs = backfill_jobs(sample_plan())
    assert [j.kind for j in jobs] == ["key", "fk"]
    assert jobs[1].ref_shadow == shadow_column("id") and jobs[1].batch_column == "id"


@pytest.mark.parametrize(
    ("src", "dst", "ok"),
    [
        (Phase.EXPANDING, Phase.EXPANDED, True),
        (Phase.BACKFILLED, Phase.PREPARING, True),
        (Phase.CUT_OVER, Phase.REVERTING, True),
        (Phase.CUT_OVER, Phase.ROLLING_BACK, False),  # after cutover, rollback swaps back instead
        (Phase.EXPANDED, Phase.CUT_OVER, False),
        (Phase.FINALIZED, Phase.ROLLING_BACK, False),
    ],
)
def test_phase_transitions(src: Phase, dst: Phase, ok: bool) -> None:
    assert can_move(src, dst) is ok


def test_finished_phases_are_terminal() -> None:
    assert not ALLOWED[Phase.FINALIZED] and not ALLOWED[Phase.ROLLED_BACK]
    assert Phase.FINALIZED not in ACTIVE_PHASES and Phase.CUT_OVER in ACTIVE_PHASES


def test_display_quotes_only_when_needed() -> None:
    assert str(TableRef("public", "mcp_servers")) == "public.mcp_servers"
    assert str(TableRef("App Data", "Order")) == '"App Data"."Order"'
    assert str(TableRef("public", "user")) == 'public."user"'


def test_a_plan_stored_before_derived_uuids_reads_as_random() -> None:
    doc = Plan(keys=(), foreign_keys=()).to_json()
    del doc["uuid_source"]
    assert Plan.from_json(doc).uuid_source == "random"
    derived = Plan(keys=(), foreign_keys=(), uuid_source="derived").to_json()
    assert derived["format_version"] == 1 and Plan.from_json(derived).derived


@pytest.mark.parametrize(
    ("version", "source", "effective"),
    [("v4", None, "derived"), ("v7", None, "random"), ("v4", "random", "random"), ("v7", "random", "random")],
)
def test_uuid_source_defaults(version: str, source: str | None, effective: str) -> None:
    assert StartSettings(uuid_version=version, uuid_source=source).source == effective


@pytest.mark.parametrize(("version", "source"), [("v7", "derived"), ("v4", "hashed")])
def test_bad_uuid_sources_are_refused(version: str, source: str) -> None:
    with pytest.raises(RefusedError):
        StartSettings(uuid_version=version, uuid_source=source)
