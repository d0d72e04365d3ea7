"""The routine scanner on bodies alone: what pglast's parsers let it see, and what it must not flag."""

from __future__ import annotations

from online_uuid.routines import analyse_plpgsql, analyse_sql_function
from online_uuid.sqlscan import Converted

CONVERTED = Converted(
    {("public", "customer"): frozenset({"customer_id"}), ("sales", "rental"): frozenset({"customer_id"})}
)


def _names(found: list) -> set[str]:  # type: ignore[type-arg]
    return {f.name for f in found}


def test_sql_function_arguments_by_name_and_position() -> None:
    found = analyse_sql_function(
        "SELECT count(*) FROM sales.rental r JOIN customer c ON c.customer_id = r.customer_id "
        "WHERE r.customer_id = $1 OR c.customer_id = f.p_two OR r.amount = p_three",
        CONVERTED,
        "f",
        [("", "integer"), ("p_two", "bigint"), ("p_three", "integer")],
        "bigint",
    )
    assert _names(found) == {"$1", "p_two"}


def test_a_column_named_like_the_argument_is_the_column() -> None:
    # inside SQL an unqualified name that is a column of the statement's tables is the column
    found = analyse_sql_function(
        "SELECT 1 FROM customer WHERE customer_id = customer_id",
        CONVERTED,
        "f",
        [("customer_id", "int")],
        "int",
    )
    assert found == []


def test_schema_qualified_names_must_match() -> None:
    found = analyse_sql_function(
        "SELECT 1 FROM other.rental r WHERE r.customer_id = p", CONVERTED, "f", [("p", "integer")], "integer"
    )
    assert found == []


def test_plpgsql_for_loops_assignments_and_dynamic_sql() -> None:
    body = """CREATE FUNCTION public.g(p int) RETURNS void LANGUAGE plpgsql AS $x$
    DECLARE a int; b int; t text;
    BEGIN
      FOR a IN SELECT customer_id FROM customer LOOP NULL; END LOOP;
      b := (SELECT c.customer_id FROM customer c WHERE c.customer_id > 0 LIMIT 1);
      t := 'SELECT customer_id FROM customer WHERE customer_id = ' || p;
      INSERT INTO sales.rental (customer_id) VALUES (p);
    END $x$"""
    found = analyse_plpgsql(body, CONVERTED, "g")
    assert _names(found) == {"a", "b", "p"}
    assert any("written into rental.customer_id" in f.message for f in found if f.name == "p")
