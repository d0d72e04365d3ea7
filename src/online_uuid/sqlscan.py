"""Reads SQL text with PostgreSQL's own parser (pglast) and finds where converted columns are used.

The pieces `routines` (function and procedure bodies) and `plan` (materialized views' output) share:
a statement's table aliases, column references resolved to converted columns, integer variables.
Names are matched as written: a table by name (and schema when qualified), a column through the
statement's table aliases, an unqualified column when a converted table of the statement has it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pglast import parser as pg_parser

INTEGER_TYPE_NAMES = frozenset(
    {"int2", "int4", "int8", "smallint", "integer", "bigint", "int", "serial", "bigserial", "smallserial"}
)


@dataclass(frozen=True)
class Finding:
    """One argument or variable of a routine that will break, and why."""

    name: str  # the argument or variable
    message: str


@dataclass(frozen=True)
class Converted:
    """The converted columns by table: (schema, table) -> column names."""

    columns: dict[tuple[str, str], frozenset[str]]

    def tables_named(self, schema: str | None, name: str) -> list[tuple[str, str]]:
        return [t for t in self.columns if t[1] == name and (schema is None or t[0] == schema)]

    def display(self, table: tuple[str, str], column: str) -> str:
        return f"{table[1]}.{column}"


@dataclass
class Scope:
    """Integer-typed names (arguments, variables) and the positional arguments $n."""

    integers: dict[str, str] = field(default_factory=dict)  # name -> declared type text
    positional: dict[int, tuple[str, str]] = field(default_factory=dict)  # n -> (name, type)


def is_integer_type(typname: str) -> bool:
    t = typname.strip().lower().removeprefix("pg_catalog.")
    return t in INTEGER_TYPE_NAMES


# --- generic JSON walking -----------------------------------------------------------------------


def nodes(tree: Any, kind: str) -> Iterator[dict[str, Any]]:
    """Every node of `kind` anywhere under `tree` (pglast's JSON form)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == kind and isinstance(value, dict):
                yield value
            yield from nodes(value, kind)
    elif isinstance(tree, list):
        for item in tree:
            yield from nodes(item, kind)


def strings(fields: list[Any]) -> list[str] | None:
    out = []
    for f in fields:
        s = f.get("String") if isinstance(f, dict) else None
        if s is None:
            return None  # A_Star
        out.append(str(s.get("sval", s.get("str", ""))))
    return out


def unwrap(node: Any) -> Any:
    """Strip casts: `p::int` still passes p."""
    while isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"]["arg"]
    return node


# --- one SQL statement ----------------------------------------------------------------------------


class Statement:
    """Resolves column references of one parsed statement against the converted columns."""

    def __init__(self, stmt: dict[str, Any], converted: Converted, scope: Scope, fn_name: str) -> None:
        self.stmt, self.converted, self.scope, self.fn_name = stmt, converted, scope, fn_name
        self.aliases: dict[str, list[tuple[str, str]]] = {}
        self.tables: list[tuple[str, str]] = []
        targets = [
            n["relation"]
            for kind in ("UpdateStmt", "InsertStmt", "DeleteStmt", "MergeStmt")
            for n in nodes(stmt, kind)
            if isinstance(n.get("relation"), dict)
        ]
        for rv in [*nodes(stmt, "RangeVar"), *targets]:  # a DML target is a bare RangeVar
            found = converted.tables_named(rv.get("schemaname"), str(rv.get("relname", "")))
            alias = (rv.get("alias") or {}).get("aliasname") or rv.get("relname")
            self.aliases.setdefault(str(alias), []).extend(found)
            self.tables.extend(found)

    def column(self, node: Any) -> str | None:
        """`table.column` when the node is a converted column, else None."""
        node = unwrap(node)
        if not isinstance(node, dict) or "ColumnRef" not in node:
            return None
        names = strings(node["ColumnRef"]["fields"])
        if not names:
            return None
        col = names[-1]
        candidates = self.aliases.get(names[-2], []) if len(names) >= 2 else self.tables
        for table in candidates:
            if col in self.converted.columns[table]:
                return self.converted.display(table, col)
        return None

    def integer_var(self, node: Any) -> tuple[str, str] | None:
        """(name, type) when the node is an integer argument or variable."""
        node = unwrap(node)
        if not isinstance(node, dict):
            return None
        if "ParamRef" in node:
            return self.scope.positional.get(int(node["ParamRef"].get("number", 0)))
        if "ColumnRef" in node:
            names = strings(node["ColumnRef"]["fields"])
            if not names or len(names) > 2 or (len(names) == 2 and names[0] != self.fn_name):
                return None
            if self.column(node) is not None and len(names) == 1:
                return None  # a column of the statement's tables shadows the variable in SQL
            name = names[-1]
            if name in self.scope.integers:
                return name, self.scope.integers[name]
        return None

    def comparisons(self) -> Iterator[Finding]:
        for expr in nodes(self.stmt, "A_Expr"):
            sides = [expr.get("lexpr"), expr.get("rexpr")]
            right = sides[1]
            if isinstance(right, dict) and "List" in right:
                sides = [sides[0], *right["List"].get("items", [])]
            cols = [c for c in (self.column(s) for s in sides) if c]
            if not cols:
                continue
            for s in sides:
                var = self.integer_var(s)
                if var:
                    yield Finding(
                        var[0], f"{var[1]} {var[0]} is compared with {cols[0]}, which becomes uuid at cutover"
                    )

    def assignments(self) -> Iterator[Finding]:
        for upd in nodes(self.stmt, "UpdateStmt"):
            rel = upd.get("relation", {})
            tables = self.converted.tables_named(rel.get("schemaname"), str(rel.get("relname", "")))
            for rt in nodes(upd.get("targetList", []), "ResTarget"):
                yield from self._assigned(tables, str(rt.get("name", "")), rt.get("val"))
        for ins in nodes(self.stmt, "InsertStmt"):
            rel = ins.get("relation", {})
            tables = self.converted.tables_named(rel.get("schemaname"), str(rel.get("relname", "")))
            cols = [str(rt.get("name", "")) for rt in nodes(ins.get("cols", []), "ResTarget")]
            for values in nodes(ins.get("selectStmt", {}), "List"):
                for col, val in zip(cols, values.get("items", []), strict=False):
                    yield from self._assigned(tables, col, val)

    def _assigned(self, tables: list[tuple[str, str]], col: str, val: Any) -> Iterator[Finding]:
        var = self.integer_var(val)
        for table in tables:
            if var and col in self.converted.columns[table]:
                what = self.converted.display(table, col)
                yield Finding(
                    var[0], f"{var[1]} {var[0]} is written into {what}, which becomes uuid at cutover"
                )

    def first_targets(self) -> list[str | None]:
        """The converted column (or None) of each output column of the statement's top SELECT."""
        top = self.stmt.get("SelectStmt")
        if top is None:
            return []
        return [self.column(rt.get("val")) for rt in nodes(top.get("targetList", []), "ResTarget")]


def parse_statements(text: str) -> list[dict[str, Any]]:
    doc = json.loads(pg_parser.parse_sql_json(text))
    return [s["stmt"] for s in doc.get("stmts", []) if "stmt" in s]


def converted_outputs(definition: str, converted: Converted, columns: list[str]) -> list[str] | None:
    """Output columns of a view's query that come straight from a converted column (`SELECT *` too);
    None when the text does not parse."""
    try:
        stmts = parse_statements(definition)
    except pg_parser.ParseError:
        return None
    out: list[str] = []
    for stmt in stmts[:1]:
        top = stmt.get("SelectStmt", {})
        while top.get("larg"):  # UNION & co: the first branch names the columns
            top = top["larg"]
        st = Statement({"SelectStmt": top}, converted, Scope(), "")
        for i, rt in enumerate(nodes(top.get("targetList", []), "ResTarget")):
            val = unwrap(rt.get("val"))
            ref = val.get("ColumnRef") if isinstance(val, dict) else None
            if ref is not None and strings(ref["fields"]) is None:  # t.* or *
                names = strings(ref["fields"][:-1]) or []
                tables = st.aliases.get(names[-1], []) if names else st.tables
                out += [st.converted.display(t, c) for t in tables for c in sorted(converted.columns[t])]
                continue
            col = st.column(val)
            if col:
                name = columns[i] if i < len(columns) else col
                out.append(f"{name} ({col})")
    return out
