"""`plan` names each argument or variable of a function or procedure that a converted key breaks."""

from __future__ import annotations

import json

import psycopg
from typer.testing import CliRunner

from online_uuid import api
from online_uuid.cli import app

DDL = """
CREATE TABLE customer (customer_id serial PRIMARY KEY, store_id int, active int);
CREATE TABLE rental (rental_id serial PRIMARY KEY, customer_id int REFERENCES customer, amount numeric);
CREATE FUNCTION get_customer_balance(p_customer_id integer, p_effective_date timestamptz)
RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE
    v_total numeric;
    v_cid customer.customer_id%TYPE;
    r customer%ROWTYPE;
    v_n int;
    v_m bigint;
BEGIN
    SELECT sum(amount) INTO v_total FROM rental WHERE rental.customer_id = p_customer_id;
    SELECT c.customer_id INTO v_n FROM customer c LIMIT 1;
    v_m := (SELECT max(store_id) FROM customer);
    RETURN v_total;
END $$;
CREATE FUNCTION customer_by_store(int) RETURNS SETOF customer LANGUAGE sql
    AS 'SELECT * FROM customer WHERE store_id = $1';
CREATE FUNCTION last_customer() RETURNS int LANGUAGE sql
    AS 'SELECT customer_id FROM customer ORDER BY 1 DESC LIMIT 1';
CREATE FUNCTION rentals_of(int) RETURNS bigint LANGUAGE sql
    AS 'SELECT count(*) FROM rental r WHERE r.customer_id IN ($1, 0)';
CREATE PROCEDURE deactivate(p_id bigint) LANGUAGE plpgsql
    AS $$ BEGIN UPDATE customer SET active = 0 WHERE customer_id = p_id; END $$;
CREATE FUNCTION "Move Rental"(p_rental int, p_to int) RETURNS void LANGUAGE sql
    AS 'UPDATE rental SET customer_id = p_to WHERE rental_id = p_rental';
CREATE FUNCTION store_count(p int) RETURNS bigint LANGUAGE sql
    AS 'SELECT count(*) FROM customer WHERE store_id = p';
CREATE FUNCTION unrelated(x int) RETURNS int LANGUAGE sql AS 'SELECT x + 1';
SET check_function_bodies = off;
CREATE FUNCTION broken() RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN (SELECT 1 FROM customer; END';
"""


def _found(plan_warnings: list[dict[str, str]]) -> dict[tuple[str, str], str]:
    return {(w["object"], w["argument"]): w["message"] for w in plan_warnings}


def test_routines_that_break_are_listed_with_the_argument_or_variable(
    dsn: str, conn: psycopg.Connection
) -> None:
    conn.execute(DDL)
    plan = api.plan(dsn, ["customer"])
    found = _found([w.__dict__ for w in plan.warnings])
    balance = "function get_customer_balance(integer,timestamp with time zone)"
    assert "compared with rental.customer_id" in found[(balance, "p_customer_id")]
    assert "customer.customer_id%TYPE" in found[(balance, "v_cid")]
    assert "customer_id become uuid" in found[(balance, "r")]
    assert "receives customer.customer_id" in found[(balance, "v_n")]
    assert (balance, "v_m") not in found and (balance, "v_total") not in found  # store_id, amount: untouched
    assert "returns SETOF customer" in found[("function customer_by_store(integer)", "result")]
    assert "from customer.customer_id" in found[("function last_customer()", "result")]
    assert "compared with rental.customer_id" in found[("function rentals_of(integer)", "$1")]
    assert "compared with customer.customer_id" in found[("procedure deactivate(bigint)", "p_id")]
    assert "written into rental.customer_id" in found[('function "Move Rental"(integer,integer)', "p_to")]
    assert ('function "Move Rental"(integer,integer)', "p_rental") not in found  # rental_id stays integer
    assert "names a converted table" in found[("function store_count(integer)", "")]
    assert not any("unrelated" in obj for obj, _ in found)
    assert "(its body did not parse)" in found[("function broken()", "")]

    result = CliRunner().invoke(app, ["plan", "-t", "customer", "--json", "--dsn", dsn])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert _found(doc["warnings"]) == found  # --json carries the same list, argument included
    human = CliRunner().invoke(app, ["plan", "-t", "customer", "--dsn", dsn])
    assert "p_customer_id" in human.output and "get_customer_balance" in human.output
