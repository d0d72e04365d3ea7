"""Prometheus metrics: the stable names the dashboard, the alerts and users' own rules depend on."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .model import TableRef

# name -> (type, labels). The README, the dashboard and the alert rules are checked against this.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "online_uuid_rows_backfilled_total": ("counter", ("table", "column")),
    "online_uuid_rows_remaining": ("gauge", ("table", "column")),
    "online_uuid_batch_duration_seconds": ("histogram", ("table",)),
    "online_uuid_batch_size": ("gauge", ("table",)),
    "online_uuid_throttled": ("gauge", ("reason",)),
    "online_uuid_phase": ("gauge", ("phase",)),
    "online_uuid_eta_seconds": ("gauge", ()),
    "online_uuid_replication_lag_seconds": ("gauge", ("replica",)),
    "online_uuid_errors_total": ("counter", ("kind",)),
    "online_uuid_cutover_lock_held_seconds": ("gauge", ()),
    "online_uuid_cutover_attempts_total": ("counter", ("outcome",)),
    "online_uuid_dead_tuples": ("gauge", ("table",)),
    "online_uuid_paused": ("gauge", ()),
    "online_uuid_latency_budget": ("gauge", ()),
    "online_uuid_canary_p99_seconds": ("gauge", ()),
    "online_uuid_canary_baseline_seconds": ("gauge", ()),
    "online_uuid_latency_impact_ratio": ("gauge", ()),
    "online_uuid_allowed_rows_per_second": ("gauge", ()),
    "online_uuid_info": ("gauge", ("uuid_source",)),
}

BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 5.0, 10.0)


CUTOVER_OUTCOMES = ("success", "lock_timeout", "deadlock")


def table_label(table: TableRef) -> str:
    """`schema.table` without SQL quoting: a `"` in a label would break PromQL string literals."""
    return f"{table.schema}.{table.name}"


class Metrics:
    """One registry per run, so tests and embedded callers never clash on global state."""

    def __init__(self, migration: str = "", registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.migration = migration
        r = self.registry
        self.rows_backfilled = Counter(
            "online_uuid_rows_backfilled",
            "Rows whose shadow column the backfill filled.",
            ("table", "column"),
            registry=r,
        )
        self.rows_remaining = Gauge(
            "online_uuid_rows_remaining",
            "Rows estimated left to backfill, from key position.",
            ("table", "column"),
            registry=r,
        )
        self.batch_duration = Histogram(
            "online_uuid_batch_duration_seconds",
            "Wall time of one backfill batch transaction.",
            ("table",),
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_size = Gauge(
            "online_uuid_batch_size", "Current adaptive batch size in rows.", ("table",), registry=r
        )
        self.throttled = Gauge(
            "online_uuid_throttled",
            "1 while the backfill is held back for this reason.",
            ("reason",),
            registry=r,
        )
        self.phase = Gauge(
            "online_uuid_phase", "1 for the migration's current phase.", ("phase",), registry=r
        )
        self.eta = Gauge("online_uuid_eta_seconds", "Estimated seconds until the backfill ends.", registry=r)
        self.replication_lag = Gauge(
            "online_uuid_replication_lag_seconds",
            "Replay lag of each standby watched.",
            ("replica",),
            registry=r,
        )
        self.errors = Counter(
            "online_uuid_errors", "Errors met (transient ones are retried).", ("kind",), registry=r
        )
        self.lock_held = Gauge(
            "online_uuid_cutover_lock_held_seconds",
            "How long the last cutover held its locks.",
            registry=r,
        )
        self.cutover_attempts = Counter(
            "online_uuid_cutover_attempts",
            "Cutover lock attempts by outcome.",
            ("outcome",),
            registry=r,
        )
        self.dead_tuples = Gauge(
            "online_uuid_dead_tuples",
            "n_dead_tup of each table being backfilled.",
            ("table",),
            registry=r,
        )
        self.paused = Gauge("online_uuid_paused", "1 while the migration is paused.", registry=r)
        self.latency_budget = Gauge(
            "online_uuid_latency_budget", "--max-latency-impact F in force (0: none).", registry=r
        )
        self.canary_p99 = Gauge(
            "online_uuid_canary_p99_seconds", "The canary transaction's recent p99 latency.", registry=r
        )
        self.canary_baseline = Gauge(
            "online_uuid_canary_baseline_seconds", "The canary's p99 while no batch runs.", registry=r
        )
        self.latency_impact_ratio = Gauge(
            "online_uuid_latency_impact_ratio", "Canary p99 / its idle baseline (the budget: F).", registry=r
        )
        self.allowed_rate = Gauge(
            "online_uuid_allowed_rows_per_second", "Rows/s the latency budget allows now.", registry=r
        )
        self.info = Gauge(
            "online_uuid_info",
            "1, labelled with how pre-cutover UUIDs are made (derived or random).",
            ("uuid_source",),
            registry=r,
        )

    def set_info(self, uuid_source: str) -> None:
        self.info.labels(uuid_source=uuid_source).set(1)

    def set_phase(self, phase: str) -> None:
        from .model import Phase

        for p in Phase:
            self.phase.labels(phase=p.value).set(1 if p.value == phase else 0)

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Serve /metrics; returns the server so embedded callers and tests can shut it down."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server
