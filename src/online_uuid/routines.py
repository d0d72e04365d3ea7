"""Functions and procedures that will break when converted keys become uuid, found by parsing them.

SQL bodies go through PostgreSQL's own parser (pglast's libpg_query), PL/pgSQL bodies through
its PL/pgSQL parser, whose every embedded expression is parsed in turn. What is reported, each
naming the argument or variable concerned:

- an integer argument or variable compared with a converted column (`=`, `IN`, ...), assigned
  to one (UPDATE SET, INSERT VALUES), or receiving one (SELECT ... INTO, `:=`, FOR ... IN);
- a variable declared `%TYPE` of a converted column, or `%ROWTYPE` of a converted table;
- an SQL function returning integer whose result is a converted column.

Statements are read by `sqlscan`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import psycopg
from pglast import parser as pg_parser

from . import catalog
from .model import TableRef, Warning_
from .sqlscan import Converted, Finding, Scope, Statement, is_integer_type, nodes, parse_statements


def _analyse_sql(
    text: str, converted: Converted, scope: Scope, fn_name: str, into: list[tuple[str, str]] | None = None
) -> tuple[list[Finding], list[Statement]]:
    found: list[Finding] = []
    stmts = [Statement(s, converted, scope, fn_name) for s in parse_statements(text)]
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
    scope = Scope()
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
    for fn in nodes(tree, "PLpgSQL_function"):
        datums = fn.get("datums", [])
        break
    scope, found = Scope(), []
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
    expr: dict[str, Any], into: list[Any], converted: Converted, scope: Scope, fn_name: str
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


def _sublink_target(st: Statement) -> str | None:
    for sub in nodes(st.stmt, "SubLink"):
        inner = Statement(sub.get("subselect", {}), st.converted, st.scope, st.fn_name)
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
            why = ""
            if body is None:
                parsed = r.language in ("sql", "plpgsql")
                why = " (its body did not parse)" if parsed else f" ({r.language} is not parsed here)"
            out.append(
                Warning_(
                    object=label,
                    message=f"its body names a converted table{why}; pg_depend cannot see it, so check it "
                    "still works with uuid keys after cutover",
                )
            )
    return out
