"""Builds the Plan from the live catalog and refuses, up front, anything it cannot migrate safely."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import psycopg

from . import catalog, db, naming, partitions, replication, routines, sqlscan
from .backfill import ctid
from .errors import PlanError
from .model import (
    DependentView,
    FiringTrigger,
    ForeignKeyConversion,
    IndexTwin,
    JobKind,
    KeyConversion,
    MaterializedView,
    MatViewIndex,
    PartitionIndex,
    PartitionNode,
    Plan,
    TableRef,
    Warning_,
)
from .naming import STATE_SCHEMA, retired_column, shadow_column, twin_index
from .settings import effective_uuid_source

SUPPORTED_INDEX_METHODS = {"btree", "hash"}


def generator_for(uuid_version: str, server_version: int) -> str:
    """Display text of the generator of new UUIDs (the SQL is statements.generator_expr)."""
    from .statements import generator_expr

    return generator_expr(uuid_version, server_version).as_string(None)


class _Builder:
    """Collects the plan table by table; each check raises PlanError naming the object and the fix."""

    def __init__(self, conn: psycopg.Connection, cascade_deletes: bool, derived: bool = False) -> None:
        self.conn = conn
        self.cascade = cascade_deletes
        self.derived = derived
        self.keys: list[KeyConversion] = []
        self.fks: list[ForeignKeyConversion] = []
        self.indexes: dict[tuple[TableRef, str], IndexTwin] = {}
        self.views: dict[int, DependentView] = {}
        self.matviews: dict[int, MaterializedView] = {}
        self._matview_columns: dict[int, list[str]] = {}
        self.warnings: list[Warning_] = []
        self.converted: dict[int, dict[int, JobKind]] = {}  # table oid -> attnum -> role
        self.tables: dict[int, catalog.TableInfo] = {}
        self.root_of: dict[int, int] = {}  # partition oid -> its partitioned root's oid
        self.partition_columns: list[tuple[catalog.TableInfo, int]] = []  # partitions' converted columns

    def table(self, oid: int, references: str = "") -> catalog.TableInfo:
        """A table to change: its own key is converted, or (`references` given) a foreign key of it."""
        if oid not in self.tables:
            info = catalog.read_table_by_oid(self.conn, oid)
            self._check_table(info, references)
            self.tables[oid] = info
        return self.tables[oid]

    def _check_table(self, t: catalog.TableInfo, references: str = "") -> None:
        if t.relkind == "p" or t.is_partition:
            root = catalog.read_partition_root(self.conn, t.oid)
            if not references:
                raise PlanError(
                    f"{root} is partitioned; its key cannot become uuid online: a partitioned table's "
                    "primary key must contain the partition key (so a single-column key is the partition "
                    "key itself) and its partition bounds are integers, which a uuid cannot take; convert "
                    "it offline (re-partition)"
                )
            if self.conn.info.server_version < ctid.MIN_SERVER:
                raise PlanError(
                    f"{root} is partitioned and references {references}; converting foreign keys of "
                    "partitioned tables needs PostgreSQL 14+"
                )
            # a partitioned child: _add_partitioned_fks checks the root and every partition
        elif t.relkind != "r":
            raise PlanError(f"{t.ref} is not a table (relkind {t.relkind}); list tables only")
        if t.has_inheritance and not (t.relkind == "p" or t.is_partition):
            raise PlanError(
                f"{t.ref} takes part in table inheritance; online-uuid cannot carry inherited "
                "columns over: remove the inheritance first (ALTER TABLE ... NO INHERIT)"
            )
        if not t.owned:
            raise PlanError(
                f"permission denied: the current user does not own {t.ref}; run online-uuid as its "
                "owner (or a member of the owning role)"
            )
        self._check_row_security(t)

    def _check_row_security(self, t: catalog.TableInfo) -> None:
        """FORCE ROW LEVEL SECURITY would hide rows from the owner's backfill and verify."""
        rls = catalog.read_row_security(self.conn, t.oid)
        if not rls.forced:
            return
        if not rls.bypass:
            user = self.conn.info.user
            raise PlanError(
                f"{t.ref} has FORCE ROW LEVEL SECURITY, so the backfill and verify would not see every "
                f"row; ALTER ROLE {user} BYPASSRLS (or run as a superuser), or ALTER TABLE {t.ref} NO "
                "FORCE ROW LEVEL SECURITY while the migration runs"
            )
        self.warnings.append(
            Warning_(
                object=f"table {t.ref}",
                message="has FORCE ROW LEVEL SECURITY; this user bypasses it (superuser or BYPASSRLS), "
                "so the backfill and verify see every row: run every command as such a user",
            )
        )

    def add_key(self, name: str) -> None:
        oid = catalog.resolve_table(self.conn, name)
        if oid is None:
            raise PlanError(
                f"table {name} does not exist; check the name (schema-qualify it, and double-quote "
                "mixed-case or reserved names, e.g. '\"AuditLog\"')"
            )
        info = self.table(oid)
        pk = catalog.read_primary_key(self.conn, oid)
        if pk is None:
            raise PlanError(f"{info.ref} has no primary key; add one before converting it")
        if len(pk.columns) != 1:
            cols = ", ".join(pk.columns)
            raise PlanError(
                f"{info.ref} has a composite primary key ({cols}); online-uuid converts single-column "
                "integer keys only"
            )
        column, type_ = pk.columns[0], pk.types[0]
        if type_ == "uuid":
            raise PlanError(f"{info.ref}.{column} is already uuid; nothing to convert, drop it from --table")
        if type_ not in catalog.INTEGER_TYPES:
            raise PlanError(
                f"{info.ref}.{column} is {type_}, not an integer key; online-uuid converts "
                "smallint/integer/bigint keys only"
            )
        attnum = int(pk.conkey[0])
        if any(existing.table == info.ref for existing in self.keys):
            return
        self._check_free_names(info, column)
        for fk in catalog.read_fks_from(self.conn, oid, attnum):
            raise PlanError(
                f"{info.ref}.{column} is both a primary key and a foreign key ({fk.conname} -> "
                f"{fk.target}); list {fk.target} too or convert {info.ref} separately"
            )
        self.converted.setdefault(oid, {})[attnum] = "key"
        seq = pk.sequence
        self.keys.append(
            KeyConversion(
                table=info.ref,
                column=column,
                type=type_,
                shadow=shadow_column(column),
                retired=retired_column(column),
                constraint=pk.conname,
                identity=pk.identity or "",
                sequence=seq,
                default=pk.default_expr,
                rows=info.rows,
                bytes=info.bytes,
            )
        )
        self._add_referencing_fks(info, column, attnum)

    def _batch_column(self, child: catalog.TableInfo, attnum: int, column: str) -> str:
        """The child's integer key or an index on the FK column, else its heap (by ctid ranges)."""
        batch = catalog.read_batch_column(self.conn, child.oid, attnum)
        if batch is not None:
            return batch
        if self.conn.info.server_version < ctid.MIN_SERVER:
            raise PlanError(
                f"{child.ref} has no single-column integer primary key and no index on {column}, and "
                "walking its heap needs PostgreSQL 14+ (TID Range Scan); CREATE INDEX CONCURRENTLY on "
                f"{child.ref} ({column}) first"
            )
        return ctid.CTID

    def _check_free_names(self, info: catalog.TableInfo, column: str) -> None:
        for derived in (shadow_column(column), retired_column(column)):
            if catalog.read_column(self.conn, info.oid, derived) is not None:
                raise PlanError(
                    f"column {info.ref}.{derived} already exists and online-uuid needs that name for "
                    f"{column}; rename or drop it first"
                )

    def _add_referencing_fks(self, parent: catalog.TableInfo, column: str, attnum: int) -> None:
        trees: dict[int, list[catalog.ReferencingFk]] = {}
        for fk in catalog.read_referencing_fks(self.conn, parent.oid, attnum):
            child = self.table(int(fk.child_oid), references=f"{parent.ref}.{column}")
            if child.relkind == "p" or child.is_partition:
                trees.setdefault(catalog.read_partition_root_oid(self.conn, child.oid), []).append(fk)
                continue
            if len(fk.conkey) != 1:
                raise PlanError(
                    f"foreign key {fk.conname} on {child.ref} is composite and references "
                    f"{parent.ref}.{column}; online-uuid cannot convert composite foreign keys: "
                    "drop it before the migration and recreate it after"
                )
            _refuse_set_default(fk, child.ref)
            child_att = int(fk.conkey[0])
            col = catalog.read_column_by_num(self.conn, child.oid, child_att)
            if col.type not in catalog.INTEGER_TYPES:
                raise PlanError(f"{child.ref}.{col.attname} is {col.type}, expected an integer")
            if self.converted.get(child.oid, {}).get(child_att) is not None:
                raise PlanError(
                    f"{child.ref}.{col.attname} would be converted twice (it is a key and a foreign "
                    f"key via {fk.conname}); convert those tables in separate migrations"
                )
            self._check_free_names(child, col.attname)
            batch = self._batch_column(child, child_att, col.attname)
            self.converted.setdefault(child.oid, {})[child_att] = "fk"
            writer = catalog.read_writer_without_read(self.conn, child.oid, parent.oid)
            parent_rls = bool(catalog.read_row_security(self.conn, parent.oid).enabled)
            if parent_rls and not self.derived:  # derived triggers never read the parent
                self.warnings.append(
                    Warning_(
                        object=f"table {parent.ref}",
                        message=f"has row level security, which may hide a parent from a writer of "
                        f"{child.ref}; the dual-write trigger of {fk.conname} runs SECURITY DEFINER "
                        "so it sees every parent row (about 15% slower inserts)",
                    )
                )
            if writer is not None and not self.derived:
                self.warnings.append(
                    Warning_(
                        object=f"role {writer}",
                        message=f"may write {child.ref} but not read {parent.ref}; the dual-write trigger of "
                        f"{fk.conname} runs SECURITY DEFINER (about 15% slower inserts). GRANT SELECT ON "
                        f"{parent.ref} TO {writer} before start to avoid it",
                    )
                )
            self.fks.append(
                self._conversion(
                    fk,
                    parent,
                    column,
                    child.ref,
                    col,
                    writer is not None or parent_rls,
                    name=fk.conname,
                    batch_column=batch,
                    table_rows=child.rows,
                )
            )
        for root_oid, fks in trees.items():
            self._add_partitioned_fks(parent, column, root_oid, fks)

    def _add_partitioned_fks(
        self, parent: catalog.TableInfo, column: str, root_oid: int, fks: list[catalog.ReferencingFk]
    ) -> None:
        """Foreign keys of a partition tree: declared on the partitioned table (its partitions hold
        clones) or on partitions; each column becomes one conversion of the root's column."""
        references = f"{parent.ref}.{column}"
        root = self.table(root_oid, references=references)
        tree = catalog.read_partitions(self.conn, root_oid)
        by_column: dict[str, list[catalog.ReferencingFk]] = {}
        for fk in fks:
            where = self.tables[int(fk.child_oid)].ref
            if len(fk.conkey) != 1:
                raise PlanError(
                    f"foreign key {fk.conname} on {where} is composite and references {references}; "
                    "online-uuid cannot convert composite foreign keys: drop it before the migration and "
                    "recreate it after"
                )
            name = catalog.read_column_by_num(self.conn, int(fk.child_oid), int(fk.conkey[0])).attname
            by_column.setdefault(name, []).append(fk)
        for name, group in sorted(by_column.items()):
            self._add_partitioned_fk(parent, column, root, tree, name, group)

    def _check_partition(self, node: catalog.PartitionRow, root: TableRef) -> None:
        if node.relkind not in ("r", "p"):
            raise PlanError(
                f"partition {node.ref} of {root} is not a table (relkind {node.relkind}, e.g. a foreign "
                "table); online-uuid cannot add a shadow column to it: detach it during the migration"
            )
        if not node.owned:
            raise PlanError(
                f"permission denied: the current user does not own partition {node.ref} of {root}; run "
                "online-uuid as its owner (or a member of the owning role)"
            )
        info = catalog.read_table_by_oid(self.conn, node.oid)
        self._check_row_security(info)

    def _add_partitioned_fk(
        self,
        parent: catalog.TableInfo,
        column: str,
        root: catalog.TableInfo,
        tree: list[catalog.PartitionRow],
        name: str,
        group: list[catalog.ReferencingFk],
    ) -> None:
        references = f"{parent.ref}.{column}"
        col = catalog.read_column(self.conn, root.oid, name)
        assert col is not None  # partitions have their parent's columns, by name
        if col.type not in catalog.INTEGER_TYPES:
            raise PlanError(f"{root.ref}.{name} is {col.type}, expected an integer")
        for node in tree:
            if node.relkind != "p":
                continue
            attnums, keydef = catalog.read_partition_key(self.conn, node.oid)
            ncol = catalog.read_column(self.conn, node.oid, name)
            in_key = ncol is not None and (ncol.attnum in attnums or (0 in attnums and name in keydef))
            if in_key:
                raise PlanError(
                    f"{node.ref} is partitioned by {keydef}, which uses {name}, a foreign key to "
                    f"{references}: partition bounds are integers, which a uuid cannot take; convert it "
                    "offline (re-partition), or leave it out of the migration"
                )
        if self.converted.get(root.oid, {}).get(col.attnum) is not None:
            raise PlanError(
                f"{root.ref}.{name} would be converted twice (two keys it references are converted); "
                "convert those tables in separate migrations"
            )
        declared = [fk for fk in group if not fk.inherited]
        first = declared[0]
        for fk in declared[1:]:
            same = (fk.on_delete, fk.on_update, fk.condeferrable, fk.condeferred) == (
                first.on_delete,
                first.on_update,
                first.condeferrable,
                first.condeferred,
            )
            if not same:
                raise PlanError(
                    f"foreign keys {first.conname} and {fk.conname} of the partitions of {root.ref} "
                    f"reference {references} with different actions or timing; online-uuid converts "
                    "them as one: make them alike first"
                )
        _refuse_set_default(first, root.ref)
        if self.cascade and first.on_delete != "c":
            raise PlanError(
                f"--cascade-deletes would change foreign key {first.conname} of partitioned table "
                f"{root.ref}, and online-uuid cannot yet change a partitioned foreign key's action online: "
                f"give it ON DELETE CASCADE before the migration, or leave out --cascade-deletes"
            )
        self._check_free_names(root, name)
        nodes: list[PartitionNode] = []
        rows = 0
        for node in tree:
            if node.level > 0:
                self._check_partition(node, root.ref)
            mine = [f for f in catalog.read_table_fks(self.conn, node.oid, parent.oid) if f.column == name]
            if len(mine) > 1:
                listed = ", ".join(f.conname for f in mine)
                raise PlanError(
                    f"{node.ref}.{name} has several foreign keys to {references} ({listed}); drop all but "
                    "one before the migration"
                )
            batch = ""
            if node.leaf:
                leaf_col = catalog.read_column(self.conn, node.oid, name)
                assert leaf_col is not None
                leaf = catalog.read_table_by_oid(self.conn, node.oid)
                batch = self._batch_column(leaf, leaf_col.attnum, name)
                rows += node.rows
                self.root_of[node.oid] = root.oid
                self.partition_columns.append((leaf, leaf_col.attnum))
            elif node.level > 0:
                ncol = catalog.read_column(self.conn, node.oid, name)
                assert ncol is not None
                self.root_of[node.oid] = root.oid
                self.partition_columns.append((catalog.read_table_by_oid(self.conn, node.oid), ncol.attnum))
            nodes.append(partitions.node(node, mine[0] if mine else None, batch))
        self.converted.setdefault(root.oid, {})[col.attnum] = "fk"
        writer = catalog.read_writer_without_read(self.conn, root.oid, parent.oid)
        parent_rls = bool(catalog.read_row_security(self.conn, parent.oid).enabled)
        if (writer is not None or parent_rls) and not self.derived:
            self.warnings.append(
                Warning_(
                    object=f"table {root.ref}",
                    message=f"a role may write it but not read {parent.ref}, or {parent.ref} has row level "
                    f"security; the dual-write trigger of {root.ref}.{name} runs SECURITY DEFINER "
                    "(about 15% slower inserts)",
                )
            )
        root_fk = nodes[0].constraint if nodes and nodes[0].level == 0 else ""
        self.fks.append(
            self._conversion(
                first,
                parent,
                column,
                root.ref,
                col,
                writer is not None or parent_rls,
                name=root_fk,
                batch_column="",
                table_rows=rows,
                partitioned=True,
                partitions=tuple(nodes),
            )
        )

    def _conversion(
        self,
        fk: catalog.ReferencingFk,
        parent: catalog.TableInfo,
        column: str,
        table: TableRef,
        col: catalog.Column,
        definer: bool,
        *,
        name: str,
        batch_column: str,
        table_rows: int,
        partitioned: bool = False,
        partitions: tuple[PartitionNode, ...] = (),
    ) -> ForeignKeyConversion:
        """A foreign key of `table`.`col` to `parent`.`column` to convert, with `fk`'s actions and
        timing. With --cascade-deletes it is ON DELETE CASCADE after the swap (a partitioned one
        only gets here when it is CASCADE already)."""
        return ForeignKeyConversion(
            table=table,
            column=col.attname,
            shadow=shadow_column(col.attname),
            retired=retired_column(col.attname),
            ref_table=parent.ref,
            ref_column=column,
            on_delete=fk.on_delete,
            on_update=fk.on_update,
            deferrable=fk.condeferrable,
            initially_deferred=fk.condeferred,
            not_null=col.attnotnull,
            final_on_delete="c" if self.cascade else fk.on_delete,
            definer=definer,
            name=name,
            batch_column=batch_column,
            table_rows=table_rows,
            partitioned=partitioned,
            partitions=partitions,
        )

    # --- dependents -------------------------------------------------------------------------

    def collect_dependents(self) -> None:
        for oid, atts in self.converted.items():
            info = self.tables[oid]
            for attnum in atts:
                for dep in catalog.read_column_dependents(self.conn, oid, attnum):
                    self._classify(info, attnum, dep)
                for pub in catalog.read_publication_columns(self.conn, oid, attnum):
                    raise PlanError(
                        f"publication {pub} lists a converted column of {info.ref} in its column list; "
                        "remove the column list (ALTER PUBLICATION ... SET TABLE) before migrating"
                    )
        for info, attnum in self.partition_columns:  # a partition's own indexes, views, constraints
            for dep in catalog.read_column_dependents(self.conn, info.oid, attnum):
                self._classify(info, attnum, dep)

    def _classify(self, info: catalog.TableInfo, attnum: int, dep: catalog.Dependent) -> None:
        kind, what = dep.catalog, dep.description
        if kind == "pg_class":
            self._dependent_relation(info, int(dep.objid), what)
        elif kind == "pg_constraint":
            self._dependent_constraint(info, int(dep.objid), what)
        elif kind == "pg_rewrite":
            self._dependent_rule(int(dep.objid), what)
        elif kind == "pg_attrdef":
            pass  # the column's own default (a serial's nextval) stays with the integer column
        else:
            raise PlanError(
                f"{what} depends on a converted column of {info.ref} and cannot be carried over; "
                "drop it before the migration and recreate it after cutover"
            )

    def _dependent_relation(self, info: catalog.TableInfo, objid: int, what: str) -> None:
        rel = catalog.read_table_by_oid(self.conn, objid) if objid else None
        if rel is not None and rel.relkind == "S":
            return  # the serial/identity sequence stays owned by the retired integer column
        if rel is not None and rel.relkind in ("i", "I"):  # "I": a partitioned table's index
            self._dependent_index(info, objid)
            return
        raise PlanError(
            f"{what} depends on a converted column of {info.ref}; drop it before the migration "
            "and recreate it after cutover"
        )

    def _dependent_index(self, info: catalog.TableInfo, index_oid: int) -> None:
        idx = catalog.read_index(self.conn, index_oid)
        if idx.indisprimary and self.converted.get(info.oid, {}).get(idx.indkey[0]) == "key":
            return  # the key's own primary key: rebuilt from the shadow unique index
        if catalog.read_index_has_parent(self.conn, index_oid):
            return  # a partition's part of its partitioned table's index: the twin of that one covers it
        name = idx.name
        if idx.has_exprs or None in idx.columns:
            raise PlanError(
                f"index {name} on {info.ref} uses a converted column in an expression; drop it before "
                "the migration and recreate it after cutover"
            )
        if idx.predicate and any(c in idx.predicate for c in self._converted_names(info.oid)):
            raise PlanError(
                f"partial index {name} on {info.ref} names a converted column in its WHERE clause; "
                "drop it before the migration and recreate it after cutover"
            )
        if idx.method not in SUPPORTED_INDEX_METHODS:
            raise PlanError(
                f"index {name} on {info.ref} uses {idx.method}, which online-uuid cannot rebuild on "
                "uuid; drop it before the migration and recreate it after cutover"
            )
        if idx.contype == "x":
            raise PlanError(
                f"exclusion constraint {idx.conname} on {info.ref} covers a converted column; drop "
                "it before the migration and recreate it after cutover"
            )
        partitions: tuple[PartitionIndex, ...] = ()
        root = self.root_of.get(info.oid)
        if info.relkind == "p":
            if idx.contype:
                raise PlanError(
                    f"{'primary key' if idx.contype == 'p' else 'unique constraint'} {idx.conname} of "
                    f"partitioned table {info.ref} covers a converted column, and online-uuid cannot yet "
                    "rebuild a partitioned constraint online; drop it before the migration and recreate "
                    "it after cutover (a unique index without a constraint is rebuilt)"
                )
            partitions = tuple(
                PartitionIndex(p.table, p.name, twin_index(p.name), p.parent, p.leaf, p.level)
                for p in catalog.read_index_partitions(self.conn, index_oid)
            )
        nkey = idx.nkey
        columns = [c for c in idx.columns if c is not None]  # none is: expressions were refused above
        converted = set(self._converted_names(info.oid))
        opts = [int(o) for o in idx.indoption]
        self.indexes[(info.ref, name)] = IndexTwin(
            table=info.ref,
            name=name,
            twin=twin_index(name),
            columns=tuple(columns[:nkey]),
            include=tuple(columns[nkey:]),
            unique=idx.indisunique,
            method=idx.method,
            constraint=idx.conname,
            constraint_type=idx.contype or "",
            deferrable=bool(idx.condeferrable),
            initially_deferred=bool(idx.condeferred),
            predicate=idx.predicate,
            descending=tuple(bool(o & 1) for o in opts[:nkey]),
            nulls_first=tuple(bool(o & 2) for o in opts[:nkey]),
            opclasses=tuple(
                None if c in converted else oc
                for c, oc in zip(columns[:nkey], idx.opclasses[:nkey], strict=True)
            ),
            collations=tuple(idx.collations[:nkey]),
            partitions=partitions,
            partitioned=info.relkind == "p",
            root=self.tables[root].ref if root is not None else None,
        )

    def _converted_names(self, oid: int) -> list[str]:
        ref = self.tables[self.root_of.get(oid, oid)].ref
        names = [k.column for k in self.keys if k.table == ref]
        return names + [f.column for f in self.fks if f.table == ref]

    def _dependent_constraint(self, info: catalog.TableInfo, con_oid: int, what: str) -> None:
        con = catalog.read_constraint(self.conn, con_oid)
        if con.contype in ("f", "n"):
            return  # foreign keys are converted themselves; NOT NULL (PG 18) is carried by the swap
        if con.contype in ("p", "u", "x"):
            self._dependent_index(info, int(con.index_oid))  # their index depends on them, not the column
            return
        raise PlanError(
            f"{what} uses a converted column of {info.ref}; online-uuid cannot rewrite it for uuid: "
            "drop it before the migration and recreate it after cutover"
        )

    def _dependent_rule(self, rewrite_oid: int, what: str) -> None:
        rule = catalog.read_rewrite_view(self.conn, rewrite_oid)
        ref = TableRef(rule.nspname, rule.relname)
        if rule.relkind == "m":
            self._add_matview(int(rule.oid), ref)
            return
        if rule.relkind != "v" or rule.rulename != "_RETURN":
            raise PlanError(f"{what} reads a converted column; drop the rule before the migration")
        self._add_view(int(rule.oid), depth=0)

    def _add_matview(self, oid: int, ref: TableRef) -> None:
        """Kept on the retired integer columns from cutover, rebuilt on the uuid columns at finalize."""
        if oid in self.matviews:
            return
        for dep in catalog.read_dependents_of_relation(self.conn, oid):
            raise PlanError(
                f"{dep} reads materialized view {ref}, which finalize rebuilds on the uuid columns and "
                "swaps in under its name: drop it before the migration and recreate it after finalize"
            )
        for con in catalog.read_rule_constraint_dependencies(self.conn, oid):
            raise PlanError(
                f"materialized view {ref} relies on {con} (a GROUP BY using a primary key's functional "
                "dependency), which the cutover replaces: list the grouped columns explicitly first"
            )
        mv = catalog.read_matview(self.conn, oid)
        indexes = []
        for ix in catalog.read_matview_indexes(self.conn, oid):
            if not ix.definition.startswith(ix.head):
                raise PlanError(
                    f"index {ix.name} on materialized view {ref} cannot be copied ({ix.definition}); "
                    "drop it before the migration and recreate it after finalize"
                )
            indexes.append(MatViewIndex(ix.name, ix.unique, ix.definition[len(ix.head) :], ix.comment))
        self.matviews[oid] = MaterializedView(
            view=ref,
            definition=mv.definition,
            populated=mv.populated,
            options=tuple(mv.options),
            acl=tuple(mv.acl),
            owner=mv.owner,
            comment=mv.comment,
            column_comments=tuple((c, t) for c, t in mv.column_comments),
            indexes=tuple(indexes),
        )
        self._matview_columns[oid] = mv.columns

    def matview_warnings(self) -> None:
        columns: dict[TableRef, set[str]] = {}
        for k in self.keys:
            columns.setdefault(k.table, set()).add(k.column)
        for f in self.fks:
            columns.setdefault(f.table, set()).add(f.column)
        converted = sqlscan.Converted({(t.schema, t.name): frozenset(c) for t, c in columns.items()})
        for oid, mv in self.matviews.items():
            out = sqlscan.converted_outputs(mv.definition, converted, self._matview_columns[oid])
            if out == []:
                continue
            what = "may carry converted columns" if out is None else "carries " + ", ".join(out)
            self.warnings.append(
                Warning_(
                    object=f"materialized view {mv.view}",
                    message=f"its output {what}: its rows keep the integer values until finalize rebuilds it "
                    "on the uuid columns (with fresh data, as a refresh would); then they are uuid",
                )
            )

    def _add_view(self, oid: int, depth: int) -> None:
        if depth > 50:
            raise PlanError("views nest more than 50 levels deep over a converted column")
        known = self.views.get(oid)
        if known is not None and known.depth >= depth:
            return
        v = catalog.read_view(self.conn, oid)
        self.views[oid] = DependentView(
            view=TableRef(v.nspname, v.relname),
            definition=v.definition,
            kind=v.relkind,
            options=tuple(v.options),
            acl=tuple(v.acl),
            owner=v.owner,
            depth=depth,
        )
        for child in catalog.read_views_on_view(self.conn, oid):
            rel = catalog.read_table_by_oid(self.conn, child)
            if rel.relkind == "m":
                raise PlanError(
                    f"materialized view {rel.ref} reads a view over a converted column, which the cutover "
                    "drops and recreates, and a materialized view cannot be rebuilt inside that short "
                    "swap: drop it before the migration and recreate it after"
                )
            self._add_view(child, depth + 1)

    # --- finishing ----------------------------------------------------------------------------

    def levels(self) -> list[KeyConversion]:
        """Dependency depth of each key (the guide's tree): roots 0, their children 1, ..."""
        level = {k.table: 0 for k in self.keys}
        for _ in range(len(self.keys)):
            for f in self.fks:
                if f.table in level and f.table != f.ref_table:
                    level[f.table] = max(level[f.table], min(level[f.ref_table] + 1, len(self.keys)))
        return sorted((replace(k, level=level[k.table]) for k in self.keys), key=lambda k: (k.level, k.table))

    def function_warnings(self) -> None:
        columns: dict[TableRef, set[str]] = {}
        for k in self.keys:
            columns.setdefault(k.table, set()).add(k.column)
        for f in self.fks:
            columns.setdefault(f.table, set()).add(f.column)
        self.warnings += routines.read_warnings(self.conn, columns, sorted(self.converted))


def split_key_from(text: str) -> tuple[str, str]:
    """`TABLE.COLUMN` as SQL reads it: the table part as typed, the column unquoted (or folded)."""
    quoted, last_dot = False, -1
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == "." and not quoted:
            last_dot = i
    table, column = text[:last_dot], text[last_dot + 1 :]
    if last_dot <= 0 or not column or quoted:
        raise PlanError(f"--key-from {text}: expected TABLE.COLUMN, e.g. customer.public_id")
    if column.startswith('"') and column.endswith('"') and len(column) >= 2:
        return table, column[1:-1].replace('""', '"')
    return table, column.lower()


def _adopt(conn: psycopg.Connection, keys: list[KeyConversion], spec: str) -> list[KeyConversion]:
    """`--key-from`: the listed table's new key takes an existing uuid column's values."""
    name, column = split_key_from(spec)
    oid = catalog.resolve_table(conn, name)
    info = catalog.read_table_by_oid(conn, oid) if oid is not None else None
    k = next((k for k in keys if info is not None and k.table == info.ref), None)
    if info is None or k is None:
        raise PlanError(f"--key-from {spec}: {name} is not a table listed with --table; list it too")
    col = catalog.read_column(conn, info.oid, column)
    if col is None:
        raise PlanError(f"--key-from {spec}: {info.ref} has no column {column}")
    if col.type != "uuid":
        raise PlanError(f"--key-from {spec}: {info.ref}.{column} is {col.type}, not uuid")
    nulls, dups = catalog.read_nulls_and_duplicates(conn, info.ref, column)
    if nulls or dups:
        raise PlanError(
            f"--key-from {spec}: {info.ref}.{column} holds {nulls} NULL(s) and {dups} duplicate value(s); "
            "a key needs every value present and unique: fix them (and add NOT NULL and a unique index) first"
        )
    return [replace(x, adopt=column) if x is k else x for x in keys]


def assigned_key_warnings(keys: Sequence[KeyConversion]) -> list[Warning_]:
    """Keys with no default: say how the retired column stays filled while cut over."""
    return [
        Warning_(
            f"{k.table}.{k.column}",
            f"has no default (the application assigns its ids): while cut over, {k.retired} is numbered by "
            f"sequence {STATE_SCHEMA}.{naming.retired_sequence(k.table, k.column)} from above the highest id "
            "(dropped at finalize); after a rollback, the application's own ids must continue above those",
        )
        for k in keys
        if k.app_assigned
    ]


def trigger_order_warnings(
    conn: psycopg.Connection, keys: list[KeyConversion], fks: list[ForeignKeyConversion]
) -> list[Warning_]:
    """Application BEFORE ROW triggers that fire after ours (triggers fire in byte order of names).

    Ours must see the row as finally written; a key or FK that such a trigger sets would not reach
    the shadow column.
    """
    ours: dict[TableRef, str] = {}
    for k in keys:
        ours[k.table] = min(
            ours.get(k.table, "\uffff"), naming.fires_last(naming.key_trigger(k.table, k.column))
        )
    for f in fks:
        ours[f.table] = min(
            ours.get(f.table, "\uffff"), naming.fires_last(naming.fk_trigger(f.table, f.column))
        )
    out: list[Warning_] = []
    for table, first in sorted(ours.items()):
        for name in catalog.read_before_row_triggers(conn, table):
            if name.encode() > first.encode():
                out.append(
                    Warning_(
                        object=f"trigger {name} on {table}",
                        message=f"fires after online-uuid's BEFORE trigger {first} (triggers fire in byte "
                        "order of their names), so a key or foreign key it sets would miss the shadow "
                        f"column; rename it to sort before '~' (ALTER TRIGGER ... ON {table} RENAME TO ...) "
                        "before start",
                    )
                )
    return out


def build_plan(
    conn: psycopg.Connection,
    tables: Sequence[str],
    *,
    uuid_version: str = "v4",
    cascade_deletes: bool = False,
    key_from: Sequence[str] = (),
    uuid_source: str | None = None,
) -> Plan:
    """Discover everything the migration of `tables` touches; raise PlanError on what it can't do."""
    if not tables:
        raise PlanError("no table given; pass --table NAME (repeatable)")
    if uuid_version not in ("v4", "v7"):
        raise PlanError(f"--uuid {uuid_version}: choose v4 or v7")
    source = effective_uuid_source(uuid_source, uuid_version)
    if key_from and source == "derived":  # an adopted key's UUIDs are not derived: the lookup path
        if uuid_source == "derived":
            raise PlanError(
                "--uuid-source derived cannot adopt existing UUIDs (--key-from); drop --uuid-source, "
                "or pass --uuid-source random"
            )
        source = "random"
    b = _Builder(conn, cascade_deletes, derived=source == "derived")
    for name in tables:
        b.add_key(name)
    b.collect_dependents()
    if not catalog.read_can_create_schema(conn):
        raise PlanError(
            "permission denied: online-uuid needs CREATE on the database to make its state schema "
            "online_uuid; GRANT CREATE ON DATABASE ... to this user, or create the schema for it"
        )
    b.function_warnings()
    b.matview_warnings()
    b.warnings += trigger_order_warnings(conn, b.keys, b.fks)
    b.warnings += assigned_key_warnings(b.keys)
    server = conn.info.server_version
    fired = [
        FiringTrigger(str(TableRef(r.nspname, r.relname)), r.name, r.kind, r.enabled)
        for r in catalog.read_update_triggers(conn, sorted({*b.converted, *b.root_of}))
    ]
    keys = b.levels()
    for spec in key_from:
        keys = _adopt(conn, keys, spec)
    return Plan(
        keys=tuple(keys),
        foreign_keys=tuple(sorted(b.fks, key=lambda f: (f.table, f.column))),
        indexes=tuple(sorted(b.indexes.values(), key=lambda i: (i.table, i.name))),
        views=tuple(sorted(b.views.values(), key=lambda v: (v.depth, v.view))),
        warnings=tuple(b.warnings),
        matviews=tuple(sorted(b.matviews.values(), key=lambda m: m.view)),
        uuid_version=uuid_version,
        generator=generator_for(uuid_version, server),
        cascade_deletes=cascade_deletes,
        server_version=server,
        database=conn.info.dbname,
        backfill_replica=catalog.read_can_set_replica_role(conn),
        update_triggers=tuple(fired),
        session_settings=tuple(catalog.read_session_settings(conn, [n for _, n, _ in db.SESSION_SETTINGS])),
        publications=tuple(replication.read_publications(conn, tables_of(b))),
        subscriptions=tuple(replication.read_subscriptions(conn)),
        uuid_source=source,
    )


def tables_of(b: _Builder) -> list[TableRef]:
    return sorted({k.table for k in b.keys} | {f.table for f in b.fks})


def _refuse_set_default(fk: catalog.ReferencingFk, table: TableRef) -> None:
    if "d" in (fk.on_delete, fk.on_update):
        raise PlanError(
            f"foreign key {fk.conname} on {table} uses SET DEFAULT, which has no UUID "
            "equivalent; change it to another action first"
        )
