"""Functions and procedures that will break when converted keys become uuid, found by parsing them.

SQL bodies go through PostgreSQL's own parser (pglast's libpg_query), PL/pgSQL bodies through
its PL/pgSQL parser, whose every embedded expression is parsed in turn. What is reported, each
naming the argument or variable concerned:

- an integer argument or variable compared with a converted column (`=`, `IN`, ...), assigned
  to one (UPDATE SET, INSERT VALUES), or receiving one (SELECT ... INTO, `:=`, FOR ... IN);
- a variable declared `%TYPE` of a converted column, or `%ROWTYPE` of a converted table;
- an SQL function returning integer whose result is a converted column.

Names are matched as written: a table by name (and schema when qualified), a column through the
statement's table aliases, an unqualified column when a converted table of the statement has it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pglast import parser as pg_parser

from . import catalog
from .model import TableRef, Warning_

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
class _Scope:
    """Integer-typed names (arguments, variables) and the positional arguments $n."""

    integers: dict[str, str] = field(default_factory=dict)  # name -> declared type text
    positional: dict[int, tuple[str, str]] = field(default_factory=dict)  # n -> (name, type)


def is_integer_type(typname: str) -> bool:
    t = typname.strip().lower().removeprefix("pg_catalog.")
    return t in INTEGER_TYPE_NAMES


# --- generic JSON walking -----------------------------------------------------------------------


def _nodes(tree: Any, kind: str) -> Iterator[dict[str, Any]]:
    """Every node of `kind` anywhere under `tree` (pglast's JSON form)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == kind and isinstance(value, dict):
                yield value
            yield from _nodes(value, kind)
    elif isinstance(tree, list):
        for item in tree:
            yield from _nodes(item, kind)


def _strings(fields: list[Any]) -> list[str] | None:
    out = []
    for f in fields:
        s = f.get("String") if isinstance(f, dict) else None
        if s is None:
            return None  # A_Star
        out.append(str(s.get("sval", s.get("str", ""))))
    return out


def _unwrap(node: Any) -> Any:
    """Strip casts: `p::int` still passes p."""
    while isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"]["arg"]
    return node


# --- one SQL statement ----------------------------------------------------------------------------


class _Statement:
    """Resolves column references of one parsed statement against the converted columns."""

    def __init__(self, stmt: dict[str, Any], converted: Converted, scope: _Scope, fn_name: str) -> None:
        self.stmt, self.converted, self.scope, self.fn_name = stmt, converted, scope, fn_name
        self.aliases: dict[str, list[tuple[str, str]]] = {}
        self.tables: list[tuple[str, str]] = []
        targets = [
            n["relation"]
            for kind in ("UpdateStmt", "InsertStmt", "DeleteStmt", "MergeStmt")
            for n in _nodes(stmt, kind)
            if isinstance(n.get("relation"), dict)
        ]
        for rv in [*_nodes(stmt, "RangeVar"), *targets]:  # a DML target is a bare RangeVar
            found = converted.tables_named(rv.get("schemaname"), str(rv.get("relname", "")))
            alias = (rv.get("alias") or {}).get("aliasname") or rv.get("relname")
            self.aliases.setdefault(str(alias), []).extend(found)
            self.tables.extend(found)

    def column(self, node: Any) -> str | None:
        """`table.column` when the node is a converted column, else None."""
        node = _unwrap(node)
        if not isinstance(node, dict) or "ColumnRef" not in node:
            return None
        names = _strings(node["ColumnRef"]["fields"])
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
        node = _unwrap(node)
        if not isinstance(node, dict):
            return None
        if "ParamRef" in node:
            return self.scope.positional.get(int(node["ParamRef"].get("number", 0)))
        if "ColumnRef" in node:
            names = _strings(node["ColumnRef"]["fields"])
            if not names or len(names) > 2 or (len(names) == 2 and names[0] != self.fn_name):
                return None
            if self.column(node) is not None and len(names) == 1:
                return None  # a column of the statement's tables shadows the variable in SQL
            name = names[-1]
            if name in self.scope.integers:
                return name, self.scope.integers[name]
        return None

    def comparisons(self) -> Iterator[Finding]:
        for expr in _nodes(self.stmt, "A_Expr"):
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
        for upd in _nodes(self.stmt, "UpdateStmt"):
            rel = upd.get("relation", {})
            tables = self.converted.tables_named(rel.get("schemaname"), str(rel.get("relname", "")))
            for rt in _nodes(upd.get("targetList", []), "ResTarget"):
                yield from self._assigned(tables, str(rt.get("name", "")), rt.get("val"))
        for ins in _nodes(self.stmt, "InsertStmt"):
            rel = ins.get("relation", {})
            tables = self.converted.tables_named(rel.get("schemaname"), str(rel.get("relname", "")))
            cols = [str(rt.get("name", "")) for rt in _nodes(ins.get("cols", []), "ResTarget")]
            for values in _nodes(ins.get("selectStmt", {}), "List"):
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
        return [self.column(rt.get("val")) for rt in _nodes(top.get("targetList", []), "ResTarget")]


def parse_statements(text: str) -> list[dict[str, Any]]:
    doc = json.loads(pg_parser.parse_sql_json(text))
    return [s["stmt"] for s in doc.get("stmts", []) if "stmt" in s]


def _analyse_sql(
    text: str, converted: Converted, scope: _Scope, fn_name: str, into: list[tuple[str, str]] | None = None
) -> tuple[list[Finding], list[_Statement]]:
    found: list[Finding] = []
    stmts = [_Statement(s, converted, scope, fn_name) for s in parse_statements(text)]
    for st in stmts:
        found += [*st.comparisons(), *st.assignments()]
        if into:
            for (name, typ), col in zip(into, st.first_targets(), strict=False):
                if col:
                    found.append(Finding(name, f"{typ} {name} receives {col}, which becomes uuid at cutover"))
    return found, stmts


# --- routines -------------------------------------------------------------------------------------


def analyse_sql_function(
    body: str,
    converted: Converted,
    fn_name: str,
    args: list[tuple[str, str]],
    returns: str,
) -> list[Finding]:
    """An SQL-language body; `args` = (name, type) in order (name may be empty), `returns` its type."""
    scope = _Scope()
    for i, (name, typ) in enumerate(args, start=1):
        if is_integer_type(typ):
            label = name or f"${i}"
            scope.positional[i] = (label, typ)
            if name:
                scope.integers[name] = typ
    found, stmts = _analyse_sql(body, converted, scope, fn_name)
    if stmts and is_integer_type(returns):
        first = stmts[-1].first_targets()
        if first and first[0]:
            found.append(
                Finding("result", f"returns {returns} from {first[0]}, which becomes uuid at cutover")
            )
    return _unique(found)


_ROWTYPE = re.compile(r"^(?:(?P<schema>[^.]+)\.)?(?P<table>[^.%]+)%rowtype$", re.IGNORECASE)
_COLTYPE = re.compile(r"^(?:(?P<schema>[^.]+)\.)?(?P<table>[^.%]+)\.(?P<column>[^.%]+)%type$", re.IGNORECASE)


def _declared(typname: str, converted: Converted) -> str | None:
    """What a %TYPE / %ROWTYPE declaration (as the PL/pgSQL parser prints it) refers to, if converted."""
    text = typname.replace('"', "")
    m = _COLTYPE.match(text)
    if m:
        for table in converted.tables_named(m["schema"], m["table"]):
            if m["column"] in converted.columns[table]:
                return f"is declared {typname}, which becomes uuid at cutover"
    m = _ROWTYPE.match(text)
    if m:
        for table in converted.tables_named(m["schema"], m["table"]):
            cols = ", ".join(sorted(converted.columns[table]))
            return f"is declared {typname}: its field(s) {cols} become uuid at cutover"
    return None


def analyse_plpgsql(definition: str, converted: Converted, fn_name: str) -> list[Finding]:
    """A PL/pgSQL routine from its full CREATE text (pg_get_functiondef)."""
    tree = json.loads(pg_parser.parse_plpgsql_json(definition))
    datums: list[dict[str, Any]] = []
    for fn in _nodes(tree, "PLpgSQL_function"):
        datums = fn.get("datums", [])
        break
    scope, found = _Scope(), []
    varnos: dict[int, tuple[str, str]] = {}
    for i, d in enumerate(datums):
        var = d.get("PLpgSQL_var")
        if var is None:
            continue
        name = str(var.get("refname", ""))
        typ = str(var.get("datatype", {}).get("PLpgSQL_type", {}).get("typname", ""))
        varnos[i] = (name, typ)
        if is_integer_type(typ):
            scope.integers[name] = typ
        why = _declared(typ, converted)
        if why:
            found.append(Finding(name, f"{name} {why}"))
    for expr, into in _expressions(tree, varnos):
        found += _analyse_expr(expr, into, converted, scope, fn_name)
    return _unique(found)


def _expressions(tree: Any, varnos: dict[int, tuple[str, str]]) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    """Every embedded expression, with the INTO / FOR targets of its statement (integer ones only)."""
    if isinstance(tree, dict):
        target = tree.get("target") or tree.get("var")
        into: list[tuple[str, str]] = []
        if isinstance(target, dict) and "PLpgSQL_row" in target:
            for f in target["PLpgSQL_row"].get("fields", []):
                name, typ = varnos.get(int(f.get("varno", -1)), ("", ""))
                into.append((name, typ) if is_integer_type(typ) else ("", ""))
        for key, value in tree.items():
            if key == "PLpgSQL_expr" and isinstance(value, dict):
                yield value, []
            elif key in ("sqlstmt", "query") and isinstance(value, dict) and "PLpgSQL_expr" in value:
                yield value["PLpgSQL_expr"], into
                continue
            yield from _expressions(value, varnos)
    elif isinstance(tree, list):
        for item in tree:
            yield from _expressions(item, varnos)


def _analyse_expr(
    expr: dict[str, Any], into: list[Any], converted: Converted, scope: _Scope, fn_name: str
) -> list[Finding]:
    query, mode = str(expr.get("query", "")), int(expr.get("parseMode", 0))
    targets = [(n, t) for n, t in into] if into else None
    if mode >= 3 and ":=" in query:  # an assignment: `target := expression`
        left, _, query = query.partition(":=")
        name = left.strip().split(".")[-1].split("[")[0].strip().strip('"')
        targets = [(name, scope.integers[name])] if name in scope.integers else None
        query = "SELECT " + query
    elif mode != 0:
        query = "SELECT " + query
    try:
        found, stmts = _analyse_sql(query, converted, scope, fn_name)
    except pg_parser.ParseError:
        return []
    if targets:
        for st in stmts:
            cols = st.first_targets()
            if mode >= 3 and cols and cols[0] is None:  # `y := (SELECT col ...)`
                cols = [_sublink_target(st)]
            for (name, typ), col in zip(targets, cols, strict=False):
                if name and col:
                    found.append(Finding(name, f"{typ} {name} receives {col}, which becomes uuid at cutover"))
    return found


def _sublink_target(st: _Statement) -> str | None:
    for sub in _nodes(st.stmt, "SubLink"):
        inner = _Statement(sub.get("subselect", {}), st.converted, st.scope, st.fn_name)
        cols = inner.first_targets()
        if cols and cols[0]:
            return cols[0]
    return None


def _unique(found: list[Finding]) -> list[Finding]:
    seen: dict[tuple[str, str], Finding] = {}
    for f in found:
        seen.setdefault((f.name, f.message), f)
    return list(seen.values())


# --- from the catalog to plan warnings -------------------------------------------------------------

KINDS = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window function"}


def signature_findings(
    r: catalog.Routine, row_types: dict[int, TableRef], converted: Converted
) -> list[Finding]:
    """Arguments and results of a converted table's row type (any language)."""
    found: list[Finding] = []
    if r.returns_oid in row_types:
        t = row_types[r.returns_oid]
        cols = ", ".join(sorted(converted.columns.get((t.schema, t.name), ())))
        rows = "SETOF " if r.returns_set else ""
        found.append(Finding("result", f"returns {rows}{r.returns}: its {cols} become(s) uuid at cutover"))
    for i, oid in enumerate(r.arg_type_oids):
        if oid in row_types:
            t = row_types[oid]
            name = r.arg_names[i] if i < len(r.arg_names) and r.arg_names[i] else f"${i + 1}"
            cols = ", ".join(sorted(converted.columns.get((t.schema, t.name), ())))
            found.append(
                Finding(name, f"argument {name} is a {r.arg_types[i]} row: its {cols} become(s) uuid")
            )
    return found


def body_findings(r: catalog.Routine, converted: Converted) -> list[Finding] | None:
    """What parsing the body finds; None when the body is not SQL or PL/pgSQL, or does not parse."""
    try:
        if r.language == "sql" and r.source:
            args = list(zip(r.arg_names + [""] * len(r.arg_types), r.arg_types, strict=False))
            return analyse_sql_function(r.source, converted, r.name, args, r.returns)
        if r.language == "plpgsql" and r.definition:
            return analyse_plpgsql(r.definition, converted, r.name)
    except pg_parser.ParseError:
        return None
    return None


def _names_a_table(source: str | None, names: list[str]) -> bool:
    """For bodies no parser here reads (plpython, ...): whether the text names a converted table."""
    words = [re.compile(r"(?<![A-Za-z0-9_$])" + re.escape(n) + r"(?![A-Za-z0-9_$])", re.I) for n in names]
    return any(w.search(source or "") for w in words)


def read_warnings(
    conn: psycopg.Connection, columns: dict[TableRef, set[str]], oids: list[int]
) -> list[Warning_]:
    """One warning per argument or variable that will break, in every routine that uses a converted
    table; a general one for a routine that names such a table but in which nothing specific was found."""
    converted = Converted({(t.schema, t.name): frozenset(c) for t, c in columns.items()})
    row_types = catalog.read_row_types(conn, oids)
    names = sorted({t.name for t in columns})
    out: list[Warning_] = []
    for r in catalog.read_routines(conn, names, list(row_types)):
        label = f"{KINDS.get(r.kind, 'function')} {r.signature}"
        body = body_findings(r, converted)
        findings = signature_findings(r, row_types, converted) + (body or [])
        for f in findings:
            out.append(Warning_(object=label, message=f.message, argument=f.name))
        if not findings and _names_a_table(r.source, names):
            why = "" if body is not None else f" ({r.language} is not parsed here)"
            out.append(
                Warning_(
                    object=label,
                    message=f"its body names a converted table{why}; pg_depend cannot see it, so check it "
                    "still works with uuid keys after cutover",
                )
            )
    return out


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
        st = _Statement({"SelectStmt": top}, converted, _Scope(), "")
        for i, rt in enumerate(_nodes(top.get("targetList", []), "ResTarget")):
            val = _unwrap(rt.get("val"))
            ref = val.get("ColumnRef") if isinstance(val, dict) else None
            if ref is not None and _strings(ref["fields"]) is None:  # t.* or *
                names = _strings(ref["fields"][:-1]) or []
                tables = st.aliases.get(names[-1], []) if names else st.tables
                out += [st.converted.display(t, c) for t in tables for c in sorted(converted.columns[t])]
                continue
            col = st.column(val)
            if col:
                name = columns[i] if i < len(columns) else col
                out.append(f"{name} ({col})")
    return out
