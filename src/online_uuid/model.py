"""Pure types: what a migration converts, its phases, and the plan as stable JSON data."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

from psycopg import sql

PLAN_FORMAT_VERSION = 1

# The columns coming in at a swap: "shadow" (the uuid side, forward) or "retired" (integer, reverse).
Side = Literal["shadow", "retired"]
# A backfill job fills a key's shadow ("key") or a foreign key's ("fk"); keys come first.
JobKind = Literal["key", "fk"]
# Where a pre-cutover row's UUID comes from: "derived" = a keyed hash of its table and integer key
# (the default for v4), "random" = the column's generator, copied to children by lookup.
UUID_SOURCES = ("derived", "random")

# PostgreSQL's reserved key words (SQL Key Words appendix): shown quoted in human output.
RESERVED = frozenset(
    """all analyse analyze and any array as asc asymmetric authorization binary both case cast check
    collate collation column concurrently constraint create cross current_catalog current_date
    current_role current_schema current_time current_timestamp current_user default deferrable desc
    distinct do else end except false fetch for foreign freeze from full grant group having ilike in
    initially inner intersect into is isnull join lateral leading left like limit localtime
    localtimestamp natural not notnull null offset on only or order outer overlaps placing primary
    references returning right select session_user similar some symmetric system_user table
    tablesample then to trailing true union unique user using variadic verbose when where window
    with""".split()  # noqa: SIM905 - a word list reads better as text
)


def _show(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) and name not in RESERVED:
        return name
    return sql.Identifier(name).as_string(None)


@dataclass(frozen=True, order=True)
class TableRef:
    """A schema-qualified table name, kept unquoted; quoting happens only in SQL builders."""

    schema: str
    name: str

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def display(self) -> str:
        """`schema.name`, quoting only the parts SQL would need quoted (mixed case, spaces, keywords)."""
        return f"{_show(self.schema)}.{_show(self.name)}"

    def __str__(self) -> str:
        return self.display()


@dataclass(frozen=True)
class KeyConversion:
    """A listed table's single-column integer primary key and the columns that replace it."""

    table: TableRef
    column: str  # the key column as named before the migration
    type: str  # smallint / integer / bigint
    shadow: str  # `<column>_uuid` while the integer key is live
    retired: str  # `<column>_int` once the UUID key is live
    constraint: str  # primary key constraint (and index) name
    identity: str = ""  # "" | "a" (ALWAYS) | "d" (BY DEFAULT)
    sequence: str | None = None  # owned sequence, schema-qualified display name
    default: str | None = None  # the column default expression as the server prints it
    rows: int = 0  # reltuples estimate
    bytes: int = 0  # pg_total_relation_size
    level: int = 0  # dependency depth: 0 for roots
    adopt: str = ""  # `start --key-from`: an existing uuid column whose values the new key takes

    @property
    def key(self) -> str:
        return f"{self.table.schema}.{self.table.name}.{self.column}"

    @property
    def app_assigned(self) -> bool:
        """No default and no identity: the application assigns the ids itself (snowflake, Hibernate)."""
        return not self.identity and self.default is None


@dataclass(frozen=True)
class PartitionNode:
    """A partition (leaf, or a partitioned table in between) under a partitioned child's root.

    Read from the catalog at plan time and again by every phase (partitions.refresh), so
    partitions created or attached since are covered. Constraint names are the live column's.
    """

    table: TableRef
    parent: TableRef  # the partitioned table it is a partition of
    leaf: bool = True
    level: int = 1  # 1 under the root, 2 under an intermediate partitioned table, ...
    constraint: str = ""  # its foreign key on the converted column ("" when it has none)
    inherited: bool = False  # that constraint is its parent's, cloned (else declared on this table)
    batch_column: str = ""  # a leaf's column the backfill walks (integer, indexed) or ctid
    rows: int = 0
    shadow_constraint: str = ""  # read at run time: its foreign key on the shadow column, if any
    retired_constraint: str = ""  # read at run time: its foreign key on the retired column, if any

    @property
    def key(self) -> str:
        return f"{self.table.schema}.{self.table.name}"


@dataclass(frozen=True)
class PartitionIndex:
    """An index of a partition attached to a partitioned index (at any depth), and its twin."""

    table: TableRef
    name: str  # its name (in the partition's schema)
    twin: str  # its twin's name (read at run time: the index attached to the parent twin, if any)
    parent: str  # the index it is attached to (the partitioned table's index), same tree
    leaf: bool = True
    level: int = 1


@dataclass(frozen=True)
class ForeignKeyConversion:
    """A foreign key that references a converted key; its column is converted too."""

    name: str
    table: TableRef
    column: str
    shadow: str
    retired: str
    ref_table: TableRef
    ref_column: str
    on_delete: str  # a | r | c | n | d  (pg_constraint.confdeltype)
    on_update: str
    deferrable: bool = False
    initially_deferred: bool = False
    not_null: bool = False
    batch_column: str = ""  # child column the backfill walks (integer, indexed)
    table_rows: int = 0
    final_on_delete: str = ""  # action after cutover ("c" with --cascade-deletes)
    definer: bool = False  # a role writes the child but may not read the parent: SECURITY DEFINER trigger
    # A partitioned child: `table` is the root (the column and triggers live there) and `name` its own
    # foreign key ("" when each partition declares its own); the partitions carry theirs.
    partitioned: bool = False
    partitions: tuple[PartitionNode, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.table.schema}.{self.table.name}.{self.column}"

    def leaves(self) -> list[PartitionNode]:
        return [p for p in self.partitions if p.leaf]

    def fk_tables(self) -> list[TableRef]:
        """The root and every partition (for locks, trigger guards, renames)."""
        return list(dict.fromkeys([self.table, *(p.table for p in self.partitions)]))


@dataclass(frozen=True)
class IndexTwin:
    """An index (or unique constraint) that contains a converted column and gets a twin."""

    table: TableRef
    name: str  # original index name
    twin: str  # name of the twin built on the shadow column(s) during cutover preparation
    columns: tuple[str, ...]  # key columns in order (original names)
    include: tuple[str, ...] = ()
    unique: bool = False
    method: str = "btree"
    constraint: str | None = None  # constraint name when the index backs a unique/primary key
    constraint_type: str = ""  # "u" or "p" (a child's composite primary key)
    deferrable: bool = False
    initially_deferred: bool = False
    predicate: str | None = None  # partial index WHERE, as the server prints it
    descending: tuple[bool, ...] = ()
    nulls_first: tuple[bool, ...] = ()
    opclasses: tuple[str | None, ...] = ()  # non-default operator class per key column (kept ones)
    collations: tuple[str | None, ...] = ()  # non-default collation per key column
    # The index of a partitioned table: its partitions' indexes (attached to it, at every level).
    # A partition's own index, attached to none, is an IndexTwin of its own (`table` the partition).
    partitions: tuple[PartitionIndex, ...] = ()
    partitioned: bool = False
    root: TableRef | None = None  # the partitioned table whose converted column it indexes, if not `table`


@dataclass(frozen=True)
class DependentView:
    """A view that reads a converted column; recreated in the swap so it follows the rename."""

    view: TableRef
    definition: str  # pg_get_viewdef text captured at plan time
    kind: str = "v"
    options: tuple[str, ...] = ()  # reloptions, e.g. security_barrier=true
    acl: tuple[str, ...] = ()  # aclitem texts
    owner: str = ""
    depth: int = 0  # views on views come after their base views


@dataclass(frozen=True)
class MatViewIndex:
    """An index of a materialized view, rebuilt on its replacement at finalize."""

    name: str
    unique: bool
    tail: str  # pg_get_indexdef from `USING` on: method, columns, INCLUDE, WITH, WHERE
    comment: str | None = None


@dataclass(frozen=True)
class MaterializedView:
    """A materialized view that reads a converted column.

    It stays on the retired integer columns from cutover (the reverse triggers keep them right) and
    is rebuilt on the uuid columns at finalize, under a temporary name, then swapped in.
    """

    view: TableRef
    definition: str  # pg_get_viewdef at plan time: its names are the uuid columns after cutover
    populated: bool = True
    options: tuple[str, ...] = ()
    acl: tuple[str, ...] = ()
    owner: str = ""
    comment: str | None = None
    column_comments: tuple[tuple[str, str], ...] = ()  # (column, comment)
    indexes: tuple[MatViewIndex, ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MaterializedView:
        return cls(
            **{
                **d,
                "view": TableRef(d["view"]["schema"], d["view"]["name"]),
                "options": tuple(d["options"]),
                "acl": tuple(d["acl"]),
                "column_comments": tuple((c, t) for c, t in d["column_comments"]),
                "indexes": tuple(MatViewIndex(**i) for i in d["indexes"]),
            }
        )


@dataclass(frozen=True)
class Warning_:
    """Something the tool cannot fix but the user must know (e.g. a function naming a column)."""

    object: str
    message: str
    argument: str = ""  # for a routine: the argument or variable that will break ("result": its result)


@dataclass(frozen=True)
class FiringTrigger:
    """A user trigger or rule that an UPDATE by the backfill fires, unless it runs as replica."""

    table: str
    name: str
    kind: str = "trigger"  # or "rule"
    enabled: str = "O"  # O fires as origin only; A always; R as replica only

    def fires(self, replica: bool) -> bool:
        return self.enabled in ("A", "R") if replica else self.enabled in ("O", "A")

    def describe(self) -> str:
        mode = {"A": " (ENABLE ALWAYS)", "R": " (ENABLE REPLICA)"}.get(self.enabled, "")
        return f"{self.kind} {self.name} on {self.table}{mode}"


@dataclass(frozen=True)
class SessionSetting:
    """A timeout the database or role sets (pg_db_role_setting) that online-uuid overrides for itself."""

    scope: str  # "database d", "role r", "role r in database d"
    name: str
    value: str


@dataclass(frozen=True)
class PublicationUse:
    """A publication that carries converted tables: its subscribers need their columns first."""

    name: str
    scope: str  # "FOR ALL TABLES", "FOR TABLE", "FOR TABLES IN SCHEMA"
    tables: tuple[TableRef, ...]


class Phase(StrEnum):
    """A migration's life; `ALLOWED` lists each transition the state machine accepts."""

    EXPANDING = "expanding"
    EXPANDED = "expanded"
    BACKFILLING = "backfilling"
    BACKFILLED = "backfilled"
    PREPARING = "preparing"
    CUT_OVER = "cut_over"
    REVERTING = "reverting"
    FINALIZING = "finalizing"
    FINALIZED = "finalized"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.EXPANDING: frozenset({Phase.EXPANDED, Phase.ROLLING_BACK}),
    Phase.EXPANDED: frozenset({Phase.BACKFILLING, Phase.ROLLING_BACK}),
    Phase.BACKFILLING: frozenset({Phase.BACKFILLED, Phase.ROLLING_BACK}),
    Phase.BACKFILLED: frozenset({Phase.PREPARING, Phase.BACKFILLING, Phase.ROLLING_BACK}),
    Phase.PREPARING: frozenset({Phase.CUT_OVER, Phase.BACKFILLED, Phase.ROLLING_BACK}),
    Phase.CUT_OVER: frozenset({Phase.REVERTING, Phase.FINALIZING}),
    Phase.REVERTING: frozenset({Phase.BACKFILLED, Phase.CUT_OVER}),
    Phase.FINALIZING: frozenset({Phase.FINALIZED}),
    Phase.ROLLING_BACK: frozenset({Phase.ROLLED_BACK}),
    Phase.FINALIZED: frozenset(),
    Phase.ROLLED_BACK: frozenset(),
}

ACTIVE_PHASES = frozenset(set(Phase) - {Phase.FINALIZED, Phase.ROLLED_BACK})


def can_move(src: Phase, dst: Phase) -> bool:
    return dst in ALLOWED[src]


ACTION_SQL = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


@dataclass(frozen=True)
class Plan:
    """Everything start, backfill, cutover and finalize will touch, found once from the catalog."""

    keys: tuple[KeyConversion, ...]
    foreign_keys: tuple[ForeignKeyConversion, ...]
    indexes: tuple[IndexTwin, ...] = ()
    views: tuple[DependentView, ...] = ()
    warnings: tuple[Warning_, ...] = ()
    matviews: tuple[MaterializedView, ...] = ()
    uuid_version: str = "v4"
    generator: str = "gen_random_uuid()"  # display text of the generator (SQL: statements.generator)
    cascade_deletes: bool = False
    server_version: int = 0
    database: str = ""
    backfill_replica: bool = True  # the backfill's sessions run with session_replication_role = replica
    update_triggers: tuple[FiringTrigger, ...] = ()  # user triggers/rules on the backfilled tables

    session_settings: tuple[SessionSetting, ...] = ()
    publications: tuple[PublicationUse, ...] = ()
    subscriptions: tuple[str, ...] = ()  # subscriptions in this database (it receives rows too)

    def backfill_side_effects(self) -> list[FiringTrigger]:
        """User triggers and rules the backfill's UPDATEs fire, with the session role it will use."""
        return [t for t in self.update_triggers if t.fires(self.backfill_replica)]

    uuid_source: str = "random"  # plans stored before derived UUIDs existed are "random"

    @property
    def derived(self) -> bool:
        return self.uuid_source == "derived"

    def tables(self) -> list[TableRef]:
        """Every table the cutover locks, in one fixed order (sorted) to avoid deadlocks."""
        names = {k.table for k in self.keys} | {f.table for f in self.foreign_keys}
        return sorted(names)

    def key_for(self, table: TableRef) -> KeyConversion | None:
        return next((k for k in self.keys if k.table == table), None)

    def fks_of(self, key: KeyConversion) -> list[ForeignKeyConversion]:
        return [f for f in self.foreign_keys if f.ref_table == key.table]

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["format_version"] = PLAN_FORMAT_VERSION
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Plan:
        def ref(d: dict[str, Any]) -> TableRef:
            return TableRef(d["schema"], d["name"])

        keys = tuple(KeyConversion(**{**k, "table": ref(k["table"])}) for k in doc["keys"])

        def node(d: dict[str, Any]) -> PartitionNode:
            return PartitionNode(**{**d, "table": ref(d["table"]), "parent": ref(d["parent"])})

        fks = tuple(
            ForeignKeyConversion(
                **{
                    **f,
                    "table": ref(f["table"]),
                    "ref_table": ref(f["ref_table"]),
                    "partitions": tuple(node(p) for p in f.get("partitions", ())),
                }
            )
            for f in doc["foreign_keys"]
        )
        idx = tuple(
            IndexTwin(
                **{
                    **i,
                    "table": ref(i["table"]),
                    "columns": tuple(i["columns"]),
                    "include": tuple(i["include"]),
                    "descending": tuple(i["descending"]),
                    "nulls_first": tuple(i["nulls_first"]),
                    "opclasses": tuple(i.get("opclasses", ())),
                    "collations": tuple(i.get("collations", ())),
                    "partitions": tuple(
                        PartitionIndex(**{**p, "table": ref(p["table"])}) for p in i.get("partitions", ())
                    ),
                    "root": ref(i["root"]) if i.get("root") else None,
                }
            )
            for i in doc.get("indexes", [])
        )
        views = tuple(
            DependentView(
                **{**v, "view": ref(v["view"]), "options": tuple(v["options"]), "acl": tuple(v["acl"])}
            )
            for v in doc.get("views", [])
        )
        warns = tuple(Warning_(**w) for w in doc.get("warnings", []))
        fired = tuple(FiringTrigger(**t) for t in doc.get("update_triggers", []))
        surroundings: dict[str, Any] = {
            "session_settings": tuple(SessionSetting(**x) for x in doc.get("session_settings", [])),
            "publications": tuple(
                PublicationUse(x["name"], x["scope"], tuple(ref(t) for t in x["tables"]))
                for x in doc.get("publications", [])
            ),
            "subscriptions": tuple(doc.get("subscriptions", ())),
        }
        scalars = {
            k: doc[k]
            for k in (
                "uuid_version",
                "generator",
                "cascade_deletes",
                "server_version",
                "database",
                "backfill_replica",
                "uuid_source",
            )
            if k in doc
        }
        matviews = tuple(MaterializedView.from_json(m) for m in doc.get("matviews", []))
        return cls(
            keys=keys,
            foreign_keys=fks,
            indexes=idx,
            views=views,
            warnings=warns,
            update_triggers=fired,
            matviews=matviews,
            **scalars,
            **surroundings,
        )


@dataclass
class BackfillJob:
    """One shadow column to fill: a key (`kind='key'`) or a foreign key (`kind='fk'`)."""

    job_id: str
    kind: JobKind
    table: TableRef
    column: str  # the integer column (key, or FK column)
    shadow: str
    batch_column: str
    ref_table: TableRef | None = None
    ref_column: str | None = None
    ref_shadow: str | None = None
    level: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def backfill_jobs(plan: Plan) -> list[BackfillJob]:
    """Key jobs first (parents before children), then FK jobs; the barrier sits between them."""
    jobs: list[BackfillJob] = []
    for k in sorted(plan.keys, key=lambda k: (k.level, k.table)):
        jobs.append(
            BackfillJob(
                job_id=f"key:{k.key}",
                kind="key",
                table=k.table,
                column=k.column,
                shadow=k.shadow,
                batch_column=k.column,
                level=k.level,
                extra={"adopt": k.adopt} if k.adopt else {},
            )
        )
    for f in sorted(plan.foreign_keys, key=lambda f: (f.table, f.column)):
        parent = plan.key_for(f.ref_table)
        assert parent is not None
        # A partitioned child: one job per leaf partition, each walked like a table of its own.
        walks = [(f.table, f.batch_column, f"fk:{f.key}")]
        if f.partitioned:
            walks = [(p.table, p.batch_column, f"fk:{f.key}@{p.key}") for p in f.leaves()]
        for table, walk, job_id in walks:
            jobs.append(
                BackfillJob(
                    job_id=job_id,
                    kind="fk",
                    table=table,
                    column=f.column,
                    shadow=f.shadow,
                    batch_column=walk,
                    ref_table=f.ref_table,
                    ref_column=f.ref_column,
                    ref_shadow=parent.shadow,
                    level=parent.level + 1,
                )
            )
    return jobs
