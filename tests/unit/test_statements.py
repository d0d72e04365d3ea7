"""Golden SQL of the builders: identifiers always quoted, names never formatted into SQL text."""

from __future__ import annotations

import dataclasses

from psycopg import sql

from online_uuid import statements as s
from online_uuid.model import (
    ForeignKeyConversion,
    IndexTwin,
    KeyConversion,
    PartitionIndex,
    PartitionNode,
    Plan,
    TableRef,
)
from online_uuid.naming import retired_column, shadow_column
from online_uuid.phases.cutover import FORWARD, REVERSE, prepare_steps, swap_statements
from online_uuid.phases.start import start_steps

PARENT = TableRef("App Data", "Order")
CHILD = TableRef("public", "user")
KEY = KeyConversion(
    PARENT, "ID", "bigint", shadow_column("ID"), retired_column("ID"), "Order_pkey", identity="d"
)
FK = ForeignKeyConversion(
    "user_order_fk",
    CHILD,
    "order",
    shadow_column("order"),
    retired_column("order"),
    PARENT,
    "ID",
    "a",
    "a",
    not_null=True,
    batch_column="id",
    final_on_delete="c",
)
IX = IndexTwin(
    CHILD,
    "user_order_idx",
    "user_order_idx_ou",
    ("order", "name"),
    descending=(True, False),
    nulls_first=(True, False),
)
PLAN = Plan(keys=(KEY,), foreign_keys=(FK,), indexes=(IX,), cascade_deletes=True)


def text(q: sql.Composable) -> str:
    return q.as_string(None)


def test_add_column_quotes_everything() -> None:
    assert (
        text(s.build_add_column(PARENT, KEY.shadow))
        == 'ALTER TABLE "App Data"."Order" ADD COLUMN IF NOT EXISTS "ID_uuid" uuid'
    )


def test_twin_index_swaps_converted_columns_and_keeps_order() -> None:
    assert text(s.build_twin_index(PLAN, IX, FORWARD)) == (
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "user_order_idx_ou" ON "public"."user" USING btree '
        '("order_uuid" DESC, "name")'
    )
    assert '"order_int" DESC' in text(s.build_twin_index(PLAN, IX, REVERSE))


def test_cascade_deletes_only_after_cutover() -> None:
    assert s.fk_actions(FK, FORWARD) == ("c", "a")
    assert s.prepared_fk_actions(FK, FORWARD) == ("a", "a")  # must not change behaviour before the swap
    assert s.fk_actions(FK, REVERSE) == ("a", "a")


def test_swap_renames_then_rebuilds_keys_under_original_names() -> None:
    body = [text(q) for q in swap_statements(PLAN, FORWARD, {})]
    joined = "\n".join(body)
    assert body.index('ALTER TABLE "App Data"."Order" DROP CONSTRAINT "Order_pkey"') < body.index(
        'ALTER TABLE "App Data"."Order" RENAME COLUMN "ID" TO "ID_int"'
    )
    assert 'ADD CONSTRAINT "Order_pkey" PRIMARY KEY USING INDEX' in joined
    assert 'ALTER INDEX "public"."user_order_idx_ou" RENAME TO "user_order_idx"' in joined
    assert (
        'ADD CONSTRAINT "user_order_fk" FOREIGN KEY ("order") REFERENCES "App Data"."Order" ("ID") ON DELETE CASCADE'
        in joined
    )
    assert (
        "SELECT" not in joined.split("CREATE OR REPLACE FUNCTION")[0]
    )  # nothing reads rows before the triggers


def test_swap_numbers_an_application_assigned_key_with_one_index_probe() -> None:
    """No default, no identity: the retired column gets a sequence default, set above max(id)."""
    assigned = dataclasses.replace(KEY, identity="")
    plan = dataclasses.replace(PLAN, keys=(assigned,))
    body = [text(q) for q in swap_statements(plan, FORWARD, {})]
    reads = [q for q in body if q.startswith("SELECT")]
    assert reads == [
        'SELECT pg_catalog.setval(\'"online_uuid"."App Data_ou_Order_ID_int_seq"\', GREATEST((SELECT '
        'pg_catalog.max("ID_int") FROM "App Data"."Order"), 0) + 1, false)'
    ]
    assert body.index(reads[0]) > body.index('ALTER TABLE "App Data"."Order" RENAME COLUMN "ID" TO "ID_int"')
    back = [text(q) for q in swap_statements(plan, REVERSE, {})]
    assert 'ALTER TABLE "App Data"."Order" ALTER COLUMN "ID" DROP DEFAULT' in back


def test_start_steps_add_keys_before_foreign_keys() -> None:
    ids = [st.id for st in start_steps(PLAN)]
    assert ids == ["start:key:App Data.Order.ID", "start:fk:public.user.order"]


def test_grant_from_aclitem() -> None:
    assert (
        text(s.build_grant(PARENT, "app=arw/owner"))
        == 'GRANT INSERT, SELECT, UPDATE ON "App Data"."Order" TO "app"'
    )
    assert text(s.build_grant(PARENT, "=r/owner")) == 'GRANT SELECT ON "App Data"."Order" TO PUBLIC'


def test_privilege_comment_and_option_builders_quote_every_name() -> None:
    assert text(s.build_privilege(PARENT, "SELECT", "App Reader", True, "ID")) == (
        'GRANT SELECT ("ID") ON "App Data"."Order" TO "App Reader" WITH GRANT OPTION'
    )
    assert (
        text(s.build_privilege(PARENT, "UPDATE", None, False))
        == 'GRANT UPDATE ON "App Data"."Order" TO PUBLIC'
    )
    assert text(s.build_privilege(CHILD, "INSERT", "w", False, "order_uuid", revoke=True)) == (
        'REVOKE INSERT ("order_uuid") ON "public"."user" FROM "w" CASCADE'
    )
    assert text(s.build_column_comment(PARENT, "ID", "it's the key")) == (
        'COMMENT ON COLUMN "App Data"."Order"."ID" IS \'it\'\'s the key\''
    )
    assert text(s.build_constraint_comment(CHILD, "user_order_fk", None)) == (
        'COMMENT ON CONSTRAINT "user_order_fk" ON "public"."user" IS NULL'
    )
    assert text(s.build_statistics_target(CHILD, "order", None)) == (
        'ALTER TABLE "public"."user" ALTER COLUMN "order" SET STATISTICS -1'
    )
    assert s.build_trigger_state(CHILD, "t", "O") is None
    state = s.build_trigger_state(CHILD, "t", "R")
    assert state is not None and text(state) == 'ALTER TABLE "public"."user" ENABLE REPLICA TRIGGER "t"'


def test_start_and_the_swap_make_the_tools_triggers_enable_always() -> None:
    for step in start_steps(PLAN):
        if step.id.startswith(("start:key", "start:fk")):
            assert "ENABLE ALWAYS TRIGGER" in text(step.statements[-1])
    for side in (FORWARD, REVERSE):
        assert "ENABLE ALWAYS TRIGGER" in text(swap_statements(PLAN, side, {})[-1])


# --- derived UUIDs ------------------------------------------------------------------------------

DERIVED = Plan(keys=(KEY,), foreign_keys=(FK,), uuid_source="derived")


def test_derived_start_makes_the_derive_functions_first_and_no_lookup() -> None:
    steps = start_steps(DERIVED, b"\x01" * 32)
    assert [st.id for st in steps][:2] == ["start:derive", "start:key:App Data.Order.ID"]
    body = " ".join(text(q) for st in steps for q in st.statements)
    assert "IMMUTABLE STRICT PARALLEL SAFE" in body and "SET search_path" not in body.split("derive")[1]
    assert '"online_uuid"."App Data_ou_Order_ID_derive"(NEW."order")' in body  # the parent's function
    assert "SECURITY DEFINER" not in body and "CONSTRAINT TRIGGER" not in body
    assert "SELECT p." not in body  # never reads the parent
    assert "BEFORE INSERT OR UPDATE ON" in body and "UPDATE OF" not in body


def test_plan_sql_shows_a_placeholder_never_a_secret() -> None:
    [derive] = [st for st in start_steps(DERIVED) if st.id == "start:derive"]
    assert ":'online_uuid_secret'" in text(derive.statements[0])


def test_generator_is_built_from_the_plan_settings() -> None:
    assert text(s.generator(PLAN)) == "pg_catalog.gen_random_uuid()"
    v7_old = Plan(keys=(KEY,), foreign_keys=(), uuid_version="v7", server_version=170000)
    v7_new = Plan(keys=(KEY,), foreign_keys=(), uuid_version="v7", server_version=180000)
    assert text(s.generator(v7_old)) == '"online_uuid"."uuid_v7"()'
    assert text(s.generator(v7_new)) == "pg_catalog.uuidv7()"
    assert s.uses_v7_function(v7_old) and not s.uses_v7_function(v7_new) and not s.uses_v7_function(PLAN)


def test_prepared_fk_checks_with_the_fixup_and_gets_the_original_timing_in_the_swap() -> None:
    from dataclasses import replace

    immediate = s.build_foreign_key(PLAN, FK, FORWARD, "user_order_fk_ou", ("a", "a"))
    assert "DEFERRABLE" not in text(immediate)  # NOT DEFERRABLE, like the original and its fix-up
    assert s.build_fk_timing(FK) is None
    fixup = text(s.build_fk_triggers(PLAN, FK, FORWARD)[-1])
    assert fixup.startswith('CREATE CONSTRAINT TRIGGER "OU_user_order_fkfix" AFTER INSERT OR UPDATE')
    assert (
        "NOT DEFERRABLE FOR EACH ROW WHEN (NEW.\"order_uuid\" = '00000000-0000-0000-0000-000000000000'"
        in fixup
    )

    django = replace(FK, deferrable=True, initially_deferred=False)
    assert text(s.build_foreign_key(PLAN, django, FORWARD, "x", ("a", "a"))).endswith(
        "DEFERRABLE INITIALLY DEFERRED NOT VALID"
    )
    assert "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW" in text(
        s.build_fk_triggers(PLAN, django, FORWARD)[-1]
    )
    timing = s.build_fk_timing(django)
    assert timing is not None
    assert text(timing) == (
        'ALTER TABLE "public"."user" ALTER CONSTRAINT "user_order_fk" DEFERRABLE INITIALLY IMMEDIATE'
    )
    assert s.prepared_fk_actions(replace(FK, on_delete="n"), FORWARD) == ("n", "a")  # SET NULL mirrored


ROOT, LEAF = TableRef("public", "pay"), TableRef("Sales", "Pay 2020")
PFK = dataclasses.replace(
    FK,
    name="pay_fk",
    table=ROOT,
    final_on_delete="a",
    partitioned=True,
    partitions=(
        PartitionNode(ROOT, ROOT, leaf=False, level=0, constraint="pay_fk", shadow_constraint="pay_fk_ou"),
        PartitionNode(LEAF, ROOT, constraint="leaf fk", inherited=True, batch_column="ctid"),
    ),
)
PIX = IndexTwin(
    ROOT,
    "pay_order",
    "pay_order_ou",
    ("order",),
    partitioned=True,
    partitions=(PartitionIndex(LEAF, "Pay 2020_order_idx", "Pay 2020_order_idx_ou", "pay_order"),),
)
PPLAN = Plan(keys=(KEY,), foreign_keys=(PFK,), indexes=(PIX,))


def test_a_partitioned_index_twin_is_on_only_then_concurrent_per_leaf_then_attached() -> None:
    steps = [st for st in prepare_steps(PPLAN, FORWARD) if ":twin:" in st.id or ":attach:" in st.id]
    assert [(st.kind, text(st.statements[0])) for st in steps] == [
        (
            "ddl",
            'CREATE INDEX IF NOT EXISTS "pay_order_ou" ON ONLY "public"."pay" USING btree ("order_uuid")',
        ),
        (
            "online",
            'CREATE INDEX CONCURRENTLY IF NOT EXISTS "Pay 2020_order_idx_ou" ON "Sales"."Pay 2020" '
            'USING btree ("order_uuid")',
        ),
        ("ddl", 'ALTER INDEX "public"."pay_order_ou" ATTACH PARTITION "Sales"."Pay 2020_order_idx_ou"'),
    ]


def test_a_partitioned_fk_is_not_valid_per_leaf_then_added_on_the_root_and_renamed_everywhere() -> None:
    fresh = dataclasses.replace(
        PFK, partitions=tuple(dataclasses.replace(n, shadow_constraint="") for n in PFK.partitions)
    )
    steps = [
        st
        for st in prepare_steps(dataclasses.replace(PPLAN, foreign_keys=(fresh,)), FORWARD)
        if ":fk" in st.id
    ]
    assert [text(st.statements[0]) for st in steps] == [
        'ALTER TABLE "Sales"."Pay 2020" ADD CONSTRAINT "leaf fk_ou" FOREIGN KEY ("order_uuid") REFERENCES '
        '"App Data"."Order" ("ID_uuid") ON DELETE NO ACTION ON UPDATE NO ACTION NOT VALID',
        'ALTER TABLE "Sales"."Pay 2020" VALIDATE CONSTRAINT "leaf fk_ou"',
        'ALTER TABLE "public"."pay" ADD CONSTRAINT "pay_fk_ou" FOREIGN KEY ("order_uuid") REFERENCES '
        '"App Data"."Order" ("ID_uuid") ON DELETE NO ACTION ON UPDATE NO ACTION',
    ]
    leaf_made = dataclasses.replace(
        PFK,
        partitions=(
            PFK.partitions[0],
            dataclasses.replace(PFK.partitions[1], shadow_constraint="leaf fk_ou"),
        ),
    )
    swap = [
        text(q) for q in swap_statements(dataclasses.replace(PPLAN, foreign_keys=(leaf_made,)), FORWARD, {})
    ]
    assert 'ALTER TABLE "public"."pay" DROP CONSTRAINT "pay_fk"' in swap
    assert not any('"Sales"."Pay 2020" DROP CONSTRAINT' in q for q in swap)  # a clone goes with its parent's
    assert 'ALTER TABLE "public"."pay" RENAME CONSTRAINT "pay_fk_ou" TO "pay_fk"' in swap
    assert 'ALTER TABLE "Sales"."Pay 2020" RENAME CONSTRAINT "leaf fk_ou" TO "leaf fk"' in swap
    assert 'ALTER INDEX "Sales"."Pay 2020_order_idx_ou" RENAME TO "Pay 2020_order_idx"' in swap
