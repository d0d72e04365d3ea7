"""Generate dashboards/online-uuid.json (Grafana) from the panel specs; --check finds drift."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("online-uuid.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
LAG_THRESHOLD_S = 10  # keep in step with --max-replication-lag and OnlineUuidReplicationLagHigh


def sel(metric: str, *, table: bool = False) -> str:
    """A selector filtered by the dashboard's variables (only labels the metric really has)."""
    matchers = ['instance=~"$instance"'] + (['table=~"$table"'] if table else [])
    return f"{metric}{{{','.join(matchers)}}}"


DONE = sel("online_uuid_rows_backfilled_total", table=True)
LEFT = sel("online_uuid_rows_remaining", table=True)
BUCKETS = sel("online_uuid_batch_duration_seconds_bucket", table=True)


def quantile(q: str) -> str:
    return f"histogram_quantile({q}, sum by (table, le) (rate({BUCKETS}[$__rate_interval])))"


def pct(by: str) -> str:
    agg = f"sum by ({by})" if by else "sum"
    return f"100 * {agg} ({DONE}) / ({agg} ({DONE}) + {agg} ({LEFT}))"


# (title, type, unit, width, height, [(expr, legend)], description, extra panel settings)
Spec = tuple[str, str, str, int, int, list[tuple[str, str]], str, dict[str, Any]]
STAT = {"options": {"colorMode": "value", "graphMode": "none", "textMode": "auto"}}


def flag_texts(off: str, on: str) -> list[dict[str, Any]]:
    """Value mappings for a 0/1 gauge: 0 shows `off` in green, 1 shows `on` in orange."""
    return [
        {
            "type": "value",
            "options": {"0": {"text": off, "color": "green"}, "1": {"text": on, "color": "orange"}},
        }
    ]


PANELS: list[Spec] = [
    (
        "Phase",
        "stat",
        "none",
        4,
        5,
        [(f"max by (phase) ({sel('online_uuid_phase')}) == 1", "{{phase}}")],
        "The migration's current phase.",
        {"options": {"colorMode": "none", "graphMode": "none", "textMode": "name"}},
    ),
    (
        "Overall progress",
        "gauge",
        "percent",
        5,
        5,
        [(pct(""), "done")],
        "Rows backfilled by this run / (backfilled + remaining), over the selected tables.",
        {"min": 0, "max": 100},
    ),
    (
        "ETA",
        "stat",
        "dtdurations",
        5,
        5,
        [(f"max({sel('online_uuid_eta_seconds')})", "eta")],
        "Estimated time until the backfill ends.",
        STAT,
    ),
    (
        "Paused",
        "stat",
        "none",
        4,
        5,
        [(f"max({sel('online_uuid_paused')})", "paused")],
        "`online-uuid pause` holds the backfill; `resume` continues it.",
        {
            **STAT,
            "mappings": flag_texts("running", "PAUSED"),
        },
    ),
    (
        "Cutover lock held",
        "stat",
        "s",
        6,
        5,
        [(f"max({sel('online_uuid_cutover_lock_held_seconds')})", "lock held")],
        "How long the last cutover held its locks.",
        STAT,
    ),
    (
        "Progress per table/column",
        "bargauge",
        "percent",
        12,
        8,
        [(pct("table, column"), "{{table}}.{{column}}")],
        "Share of each shadow column filled by this run.",
        {"min": 0, "max": 100, "options": {"displayMode": "gradient", "orientation": "horizontal"}},
    ),
    (
        "Rows remaining",
        "timeseries",
        "short",
        12,
        8,
        [(f"sum by (table, column) ({LEFT})", "{{table}}.{{column}}")],
        "Rows left to backfill, estimated from the key position.",
        {},
    ),
    (
        "Rows/s per table",
        "timeseries",
        "rowsps",
        12,
        8,
        [(f"sum by (table) (rate({DONE}[$__rate_interval]))", "{{table}}")],
        "Backfill throughput.",
        {},
    ),
    (
        "Batch duration p50/p99",
        "timeseries",
        "s",
        12,
        8,
        [(quantile("0.5"), "p50 {{table}}"), (quantile("0.99"), "p99 {{table}}")],
        "Wall time of one batch transaction; the batch size adapts toward --target-batch-ms.",
        {},
    ),
    (
        "Batch size",
        "timeseries",
        "short",
        12,
        8,
        [(f"sum by (table) ({sel('online_uuid_batch_size', table=True)})", "{{table}}")],
        "Current adaptive batch size in rows.",
        {},
    ),
    (
        "Throttle state by reason",
        "state-timeline",
        "none",
        12,
        8,
        [(f"max by (reason) ({sel('online_uuid_throttled')})", "{{reason}}")],
        "1 while the backfill is held back for this reason.",
        {"mappings": flag_texts("ok", "throttled")},
    ),
    (
        "Replication lag",
        "timeseries",
        "s",
        12,
        8,
        [(f"max by (replica) ({sel('online_uuid_replication_lag_seconds')})", "{{replica}}")],
        f"Replay lag of each standby; the red line is the {LAG_THRESHOLD_S}s throttle threshold.",
        {"thresholds": [LAG_THRESHOLD_S], "custom": {"thresholdsStyle": {"mode": "line+area"}}},
    ),
    (
        "Errors and retries by kind",
        "timeseries",
        "ops",
        12,
        8,
        [(f"sum by (kind) (rate({sel('online_uuid_errors_total')}[$__rate_interval]))", "{{kind}}")],
        "Errors met; transient ones are retried.",
        {},
    ),
    (
        "Cutover attempts by outcome",
        "timeseries",
        "short",
        12,
        8,
        [
            (
                f"sum by (outcome) (increase({sel('online_uuid_cutover_attempts_total')}[$__rate_interval]))",
                "{{outcome}}",
            )
        ],
        "Cutover lock attempts; failed ones are retried with backoff.",
        {"custom": {"drawStyle": "bars", "fillOpacity": 80}},
    ),
    (
        "Dead tuples per table",
        "timeseries",
        "short",
        12,
        8,
        [(f"sum by (table) ({sel('online_uuid_dead_tuples', table=True)})", "{{table}}")],
        "n_dead_tup of each table being backfilled; autovacuum should keep it bounded.",
        {},
    ),
]


def panel(pid: int, x: int, y: int, spec: Spec) -> dict[str, Any]:
    title, kind, unit, w, h, targets, description, extra = spec
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": "red", "value": v} for v in extra.get("thresholds", [])]
    defaults: dict[str, Any] = {
        "unit": unit,
        "mappings": extra.get("mappings", []),
        "thresholds": {"mode": "absolute", "steps": steps},
        "color": {"mode": "thresholds" if kind in ("stat", "gauge") else "palette-classic"},
    }
    defaults.update({k: extra[k] for k in ("min", "max", "custom") if k in extra})
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
            **extra.get("options", {}),
        },
        "targets": [
            {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(65 + i), "range": True}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
        "regex": "",
    }


def build() -> dict[str, Any]:
    panels, x, y, row_h = [], 0, 0, 0
    for pid, spec in enumerate(PANELS, start=1):
        if x + spec[3] > 24:
            x, y, row_h = 0, y + row_h, 0
        panels.append(panel(pid, x, y, spec))
        x, row_h = x + spec[3], max(row_h, spec[4])
    kinds = sorted({p["type"] for p in panels})
    return {
        "__inputs": [],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        ]
        + [{"type": "panel", "id": k, "name": k, "version": ""} for k in kinds],
        "id": None,
        "uid": "online-uuid",
        "title": "online-uuid",
        "description": "Progress, pacing and health of an online-uuid migration.",
        "tags": ["online-uuid", "postgresql"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                },
                variable("instance", "Instance", "label_values(online_uuid_phase, instance)"),
                variable(
                    "table", "Table", 'label_values(online_uuid_rows_remaining{instance=~"$instance"}, table)'
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is stale: run python dashboards/build.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
