"""A DVD-rental-like schema, as the issue tried it: what converts now, and what is refused and why."""

from __future__ import annotations

import psycopg
import pytest

from online_uuid import api

pytestmark = pytest.mark.pg(14)

DDL = """
CREATE TABLE category (category_id serial PRIMARY KEY, name text NOT NULL, last_update timestamptz DEFAULT now());
CREATE TABLE film (film_id serial PRIMARY KEY, title text NOT NULL, rental_rate numeric DEFAULT 4.99,
                   last_update timestamptz DEFAULT now());
CREATE TABLE film_category (film_id int NOT NULL REFERENCES film, category_id int NOT NULL REFERENCES category,
                            last_update timestamptz DEFAULT now(), PRIMARY KEY (film_id, category_id));
CREATE TABLE inventory (inventory_id serial PRIMARY KEY, film_id int NOT NULL REFERENCES film, store_id int);
CREATE TABLE customer (customer_id serial PRIMARY KEY, name text);
CREATE TABLE rental (rental_id serial PRIMARY KEY, inventory_id int NOT NULL REFERENCES inventory,
                     customer_id int NOT NULL REFERENCES customer);
CREATE TABLE payment (payment_id serial, customer_id int NOT NULL, rental_id int NOT NULL, amount numeric,
                      payment_date date NOT NULL) PARTITION BY RANGE (payment_date);
CREATE TABLE payment_2020 PARTITION OF payment FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
ALTER TABLE payment_2020 ADD FOREIGN KEY (customer_id) REFERENCES customer;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.last_update := now(); RETURN NEW; END $$;
CREATE TRIGGER film_touch BEFORE UPDATE ON film FOR EACH ROW EXECUTE FUNCTION touch();
CREATE VIEW film_list AS SELECT f.film_id, f.title, c.name AS category
  FROM film f JOIN film_category fc ON fc.film_id = f.film_id JOIN category c ON c.category_id = fc.category_id;
CREATE MATERIALIZED VIEW rental_by_category AS
  SELECT c.name AS category, count(*) AS copies FROM category c
    JOIN film_category fc ON fc.category_id = c.category_id JOIN inventory i ON i.film_id = fc.film_id
   GROUP BY c.name;
CREATE FUNCTION film_in_stock(p_film_id integer, p_store_id integer) RETURNS SETOF integer LANGUAGE sql
  AS 'SELECT inventory_id FROM inventory WHERE film_id = p_film_id AND store_id = p_store_id';
INSERT INTO customer (name) SELECT 'customer ' || g FROM generate_series(1, 200) g;
INSERT INTO category (name) SELECT 'cat ' || g FROM generate_series(1, 16) g;
INSERT INTO film (title) SELECT 'film ' || g FROM generate_series(1, 500) g;
INSERT INTO film_category (film_id, category_id) SELECT g, 1 + g % 16 FROM generate_series(1, 500) g;
INSERT INTO inventory (film_id, store_id) SELECT 1 + g % 500, g % 2 FROM generate_series(1, 1500) g;
INSERT INTO rental (inventory_id, customer_id) SELECT 1 + g % 1500, 1 + g % 200 FROM generate_series(1, 2000) g;
INSERT INTO payment (customer_id, rental_id, amount, payment_date)
SELECT 1 + g % 200, 1 + g % 2000, 0.99, date '2020-01-01' + g % 366 FROM generate_series(1, 2000) g;
REFRESH MATERIALIZED VIEW rental_by_category;
"""


def test_the_whole_sample_converts_payment_partitioned_included(dsn: str, conn: psycopg.Connection) -> None:
    conn.prepare_threshold = None
    conn.execute(DDL)
    tables = ["category", "film", "inventory"]
    plan = api.plan(dsn, tables)
    walks = {(f.table.name, f.column): f.batch_column for f in plan.foreign_keys}
    assert walks[("film_category", "category_id")] == "ctid"  # no index starts with it: its heap is walked
    assert walks[("film_category", "film_id")] == "film_id"  # the primary key's index starts with it
    assert [str(m.view) for m in plan.matviews] == ["public.rental_by_category"]
    assert any(w.argument == "p_film_id" for w in plan.warnings)

    stock = conn.execute("SELECT * FROM rental_by_category ORDER BY 1").fetchall()
    api.start(dsn, tables)
    api.cutover(dsn)
    conn.execute("UPDATE film SET title = title || '!' WHERE film_id IN (SELECT film_id FROM film LIMIT 3)")
    api.finalize(dsn)
    assert conn.execute("SELECT * FROM rental_by_category ORDER BY 1").fetchall() == stock
    assert conn.execute("SELECT count(*) FROM film_list").fetchone() == (500,)
    types = dict(
        conn.execute(
            "SELECT attrelid::regclass::text || '.' || attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attname IN ('film_id', 'category_id', 'inventory_id') AND attrelid::regclass::text IN "
            "('film', 'category', 'inventory', 'film_category', 'film_list')"
        ).fetchall()
    )
    assert set(types.values()) == {"uuid"}, types

    # customer and rental next: payment (partitioned by date) references customer from its partition
    links = conn.execute(
        "SELECT p.payment_id, c.name FROM payment p JOIN customer c ON c.customer_id = p.customer_id ORDER BY 1"
    ).fetchall()
    per_customer = (
        "SELECT c.name, count(*) FROM rental r JOIN customer c USING (customer_id) GROUP BY 1 ORDER BY 1"
    )
    rentals = conn.execute(per_customer).fetchall()
    plan = api.plan(dsn, ["customer", "rental"])
    pay = next(f for f in plan.foreign_keys if f.table.name == "payment")
    assert (
        pay.partitioned
        and pay.name == ""
        and [p.constraint for p in pay.leaves()] == ["payment_2020_customer_id_fkey"]
    )
    api.start(dsn, ["customer", "rental"])
    assert api.verify(dsn).ok
    api.cutover(dsn)
    api.finalize(dsn)
    assert (
        conn.execute(
            "SELECT p.payment_id, c.name FROM payment p JOIN customer c ON c.customer_id = p.customer_id ORDER BY 1"
        ).fetchall()
        == links
    )
    assert conn.execute(per_customer).fetchall() == rentals
    cols = dict(
        conn.execute(
            "SELECT attrelid::regclass::text || '.' || attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attname IN ('customer_id', 'rental_id') AND attrelid::regclass::text IN "
            "('customer', 'rental', 'payment', 'payment_2020')"
        ).fetchall()
    )
    assert cols == {
        "customer.customer_id": "uuid",
        "rental.rental_id": "uuid",
        "rental.customer_id": "uuid",
        "payment.customer_id": "uuid",
        "payment_2020.customer_id": "uuid",
        "payment.rental_id": "integer",  # no foreign key: it stays what it was
        "payment_2020.rental_id": "integer",
    }
    fk = conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'payment_2020'::regclass AND contype = 'f'"
    ).fetchall()
    assert fk == [("payment_2020_customer_id_fkey",)]
