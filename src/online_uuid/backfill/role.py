"""The backfill's session role: `replica` where allowed, so the application's triggers stay quiet.

An UPDATE that fills a shadow column fires every user trigger and rule `ON UPDATE` of the table: a
`last_update := now()`, an audit row, a tsvector recomputed. As `session_replication_role = replica`
only the ones marked ENABLE REPLICA / ALWAYS fire (the tool's own are ALWAYS). Where the role may not
set it, or such triggers exist, `start` and `backfill` refuse unless the user accepts the side effects.
"""

from __future__ import annotations

import psycopg

from ..catalog import read_can_set_replica_role, read_table_ref, read_update_triggers
from ..errors import RefusedError
from ..model import FiringTrigger, Plan, TableRef

ALLOW_FLAG = "--allow-trigger-side-effects"


def read_firing(conn: psycopg.Connection, plan: Plan) -> tuple[bool, list[FiringTrigger]]:
    """(may run as replica, user triggers/rules on the backfilled tables), from the live catalog."""
    oids = [o for t in plan.tables() if (o := read_table_ref(conn, t)) is not None]
    found = [
        FiringTrigger(str(TableRef(r.nspname, r.relname)), r.name, r.kind, r.enabled)
        for r in read_update_triggers(conn, oids)
    ]
    return read_can_set_replica_role(conn), found


def refusal(conn: psycopg.Connection, fired: list[FiringTrigger], replica: bool) -> RefusedError:
    """One line: what would fire, and the GRANT (or the flag) that settles it."""
    user = conn.info.user or "the migration user"
    shown = ", ".join(t.describe() for t in fired[:5]) + (
        f" and {len(fired) - 5} more" if len(fired) > 5 else ""
    )
    if replica:
        fix = "they fire even as session_replication_role = replica: disable them for the backfill"
    elif conn.info.server_version >= 150000:
        fix = f"GRANT SET ON PARAMETER session_replication_role TO {user} (as a superuser) to keep them quiet"
    else:
        fix = "run it as a superuser (PostgreSQL 15+: GRANT SET ON PARAMETER session_replication_role)"
    return RefusedError(
        f"the backfill's UPDATEs would fire {shown}; {fix}, or pass {ALLOW_FLAG} to accept the side effects"
    )


def check(conn: psycopg.Connection, plan: Plan, allowed: bool) -> bool:
    """Whether the backfill runs as replica; refuses (exit 2) when user triggers would fire unaccepted."""
    replica, found = read_firing(conn, plan)
    fired = [t for t in found if t.fires(replica)]
    if fired and not allowed:
        raise refusal(conn, fired, replica)
    return replica
