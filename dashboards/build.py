"""Generate dashboards/online-uuid.json with grafana-foundation-sdk (typed builders); --check finds drift.

The SDK (the `dev` extra) types every panel against Grafana's schema: a misspelt option or a
field of the wrong panel kind fails here, not silently in Grafana.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, gauge, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm

OUT = Path(__file__).with_name("online-uuid.json")
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
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


Target = tuple[str, str]  # (PromQL, legend)


def targets(*pairs: Target) -> list[prometheus.Dataquery]:
    return [
        prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(65 + i)).range().datasource(DS)
        for i, (expr, legend) in enumerate(pairs)
    ]


def flag_texts(off: str, on: str) -> list[dm.ValueMapping]:
    """Value mappings for a 0/1 gauge: 0 shows `off` in green, 1 shows `on` in orange."""
    return [
        dm.ValueMap(
            options={
                "0": dm.ValueMappingResult(text=off, color="green"),
                "1": dm.ValueMappingResult(text=on, color="orange"),
            }
        )
    ]


def thresholds(*red_from: float) -> db.ThresholdsConfig:
    steps = [dm.Threshold(value=None, color="green")] + [dm.Threshold(value=v, color="red") for v in red_from]
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps)


def multi_tooltip() -> cb.VizTooltipOptions:
    return cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)


def last_value() -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


Builder = stat.Panel | gauge.Panel | bargauge.Panel | timeseries.Panel | statetimeline.Panel


def common_to(
    panel: Builder, title: str, unit: str, size: tuple[int, int], description: str, *pairs: Target
) -> Builder:
    """What every panel has: title, text, data source, unit, size, thresholds and its queries."""
    scheme = (
        dm.FieldColorModeId.THRESHOLDS
        if isinstance(panel, stat.Panel | gauge.Panel)
        else dm.FieldColorModeId.PALETTE_CLASSIC
    )
    return (
        panel.title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(size[0])
        .height(size[1])
        .thresholds(thresholds())
        .color_scheme(db.FieldColor().mode(scheme))
        .targets(targets(*pairs))  # type: ignore[arg-type]
    )


def big_value(title: str, unit: str, w: int, description: str, target: Target) -> stat.Panel:
    panel = stat.Panel().reduce_options(last_value()).color_mode(common.BigValueColorMode.VALUE)
    panel = panel.graph_mode(common.BigValueGraphMode.NONE).text_mode(common.BigValueTextMode.AUTO)
    return common_to(panel, title, unit, (w, 5), description, target)  # type: ignore[return-value]


def series(title: str, unit: str, description: str, *pairs: Target) -> timeseries.Panel:
    legend = cb.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
    legend = legend.placement(common.LegendPlacement.BOTTOM).show_legend(True)
    panel = timeseries.Panel().legend(legend).tooltip(multi_tooltip())
    return common_to(panel, title, unit, (12, 8), description, *pairs)  # type: ignore[return-value]


def phase() -> stat.Panel:
    panel = stat.Panel().reduce_options(last_value()).graph_mode(common.BigValueGraphMode.NONE)
    text = "The migration's current phase, and how pre-cutover UUIDs are made (derived or random)."
    panel = common_to(  # type: ignore[assignment]
        panel,
        "Phase",
        "none",
        (4, 5),
        text,
        (f"max by (phase) ({sel('online_uuid_phase')}) == 1", "{{phase}}"),
        (f"max by (uuid_source) ({sel('online_uuid_info')}) == 1", "UUIDs {{uuid_source}}"),
    )
    return panel.color_mode(common.BigValueColorMode.NONE).text_mode(common.BigValueTextMode.NAME)


def overall_progress() -> gauge.Panel:
    panel = gauge.Panel().reduce_options(last_value()).min(0).max(100)
    text = "Rows backfilled by this run / (backfilled + remaining), over the selected tables."
    return common_to(panel, "Overall progress", "percent", (5, 5), text, (pct(""), "done"))  # type: ignore[return-value]


def progress_per_column() -> bargauge.Panel:
    panel = bargauge.Panel().reduce_options(last_value()).min(0).max(100)
    panel = panel.display_mode(common.BarGaugeDisplayMode.GRADIENT).orientation(
        common.VizOrientation.HORIZONTAL
    )
    text = "Share of each shadow column filled by this run."
    pair = (pct("table, column"), "{{table}}.{{column}}")
    return common_to(panel, "Progress per table/column", "percent", (12, 8), text, pair)  # type: ignore[return-value]


def throttle_state() -> statetimeline.Panel:
    legend = cb.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
    legend = legend.placement(common.LegendPlacement.BOTTOM).show_legend(True)
    panel = (
        statetimeline.Panel().legend(legend).tooltip(multi_tooltip()).mappings(flag_texts("ok", "throttled"))
    )
    text = "1 while the backfill is held back for this reason."
    pair = (f"max by (reason) ({sel('online_uuid_throttled')})", "{{reason}}")
    return common_to(panel, "Throttle state by reason", "none", (12, 8), text, pair)  # type: ignore[return-value]


def replication_lag() -> timeseries.Panel:
    text = f"Replay lag of each standby; the red line is the {LAG_THRESHOLD_S}s throttle threshold."
    pair = (f"max by (replica) ({sel('online_uuid_replication_lag_seconds')})", "{{replica}}")
    panel = series("Replication lag", "s", text, pair).thresholds(thresholds(LAG_THRESHOLD_S))
    return panel.thresholds_style(
        cb.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE_AND_AREA)
    )


def cutover_attempts() -> timeseries.Panel:
    expr = f"sum by (outcome) (increase({sel('online_uuid_cutover_attempts_total')}[$__rate_interval]))"
    text = "Cutover lock attempts; failed ones are retried with backoff."
    panel = series("Cutover attempts by outcome", "short", text, (expr, "{{outcome}}"))
    return panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)


# In the order they fill the grid, left to right, 24 columns a row.
PANELS: list[Callable[[], Builder]] = [
    phase,
    overall_progress,
    lambda: big_value(
        "ETA",
        "dtdurations",
        5,
        "Estimated time until the backfill ends.",
        (f"max({sel('online_uuid_eta_seconds')})", "eta"),
    ),
    lambda: big_value(
        "Paused",
        "none",
        4,
        "`online-uuid pause` holds the backfill; `resume` continues it.",
        (f"max({sel('online_uuid_paused')})", "paused"),
    ).mappings(flag_texts("running", "PAUSED")),
    lambda: big_value(
        "Cutover lock held",
        "s",
        6,
        "How long the last cutover held its locks.",
        (f"max({sel('online_uuid_cutover_lock_held_seconds')})", "lock held"),
    ),
    progress_per_column,
    lambda: series(
        "Rows remaining",
        "short",
        "Rows left to backfill, estimated from the key position.",
        (f"sum by (table, column) ({LEFT})", "{{table}}.{{column}}"),
    ),
    lambda: series(
        "Rows/s per table",
        "rowsps",
        "Backfill throughput.",
        (f"sum by (table) (rate({DONE}[$__rate_interval]))", "{{table}}"),
    ),
    lambda: series(
        "Batch duration p50/p99",
        "s",
        "Wall time of one batch transaction; the batch size adapts toward --target-batch-ms.",
        (quantile("0.5"), "p50 {{table}}"),
        (quantile("0.99"), "p99 {{table}}"),
    ),
    lambda: series(
        "Batch size",
        "short",
        "Current adaptive batch size in rows.",
        (f"sum by (table) ({sel('online_uuid_batch_size', table=True)})", "{{table}}"),
    ),
    throttle_state,
    replication_lag,
    lambda: series(
        "Errors and retries by kind",
        "ops",
        "Errors met; transient ones are retried.",
        (f"sum by (kind) (rate({sel('online_uuid_errors_total')}[$__rate_interval]))", "{{kind}}"),
    ),
    cutover_attempts,
    lambda: series(
        "Dead tuples per table",
        "short",
        "n_dead_tup of each table being backfilled; autovacuum should keep it bounded.",
        (f"sum by (table) ({sel('online_uuid_dead_tuples', table=True)})", "{{table}}"),
    ),
]


# --max-latency-impact: each reads 0 while no budget is set.
LATENCY_PANELS: list[Callable[[], Builder]] = [
    lambda: series(
        "Latency budget: canary p99 / idle",
        "none",
        "The backfill's canary transaction: its p99 over its idle p99, steered to stay under F.",
        (f"max({sel('online_uuid_latency_impact_ratio')})", "canary p99 / idle"),
        (f"max({sel('online_uuid_latency_budget')})", "budget F"),
    ),
    lambda: series(
        "Canary p99 and idle baseline",
        "s",
        "Latency of the canary's read + committed write, while backfilling and while idle.",
        (f"max({sel('online_uuid_canary_p99_seconds')})", "canary p99"),
        (f"max({sel('online_uuid_canary_baseline_seconds')})", "idle baseline p99"),
    ),
    lambda: series(
        "Rows/s the latency budget allows",
        "rowsps",
        "The rate the latency budget steers to (AIMD on the canary's p99).",
        (f"max({sel('online_uuid_allowed_rows_per_second')})", "allowed"),
    ),
]
PANELS += LATENCY_PANELS


def variable(name: str, label: str, query: str) -> db.QueryVariable:
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def build() -> dict[str, Any]:
    dash = (
        db.Dashboard("online-uuid")
        .uid("online-uuid")
        .description("Progress, pacing and health of an online-uuid migration.")
        .tags(["online-uuid", "postgresql"])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .refresh("10s")
        .time("now-6h", "now")
        .timezone("")
        .version(1)
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(variable("instance", "Instance", "label_values(online_uuid_phase, instance)"))
        .with_variable(
            variable(
                "table", "Table", 'label_values(online_uuid_rows_remaining{instance=~"$instance"}, table)'
            )
        )
    )
    for pid, make in enumerate(PANELS, start=1):
        dash = dash.with_panel(make().id(pid))
    doc: dict[str, Any] = json.loads(json.dumps(dash.build(), cls=JSONEncoder))
    kinds = sorted({p["type"] for p in doc["panels"]})
    doc["__requires"] = [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
    ] + [{"type": "panel", "id": k, "name": k, "version": ""} for k in kinds]
    return doc


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


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
