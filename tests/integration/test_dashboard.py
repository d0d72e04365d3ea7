"""Every dashboard query and alert rule, run by a real Prometheus against live metrics."""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml  # type: ignore[import-untyped]

from online_uuid.metrics import Metrics
from online_uuid.model import Phase

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "dashboards" / "online-uuid.json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SUBSTITUTIONS = {"$instance": ".*", "$table": ".*", "$__rate_interval": "1m", "$datasource": ""}
SHORT_FOR, SHORT_WINDOW = "2s", "[5s]"

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not (Path(PROMETHEUS).is_file() and Path(PROMTOOL).is_file()),
        reason="needs Debian's prometheus and promtool (apt-get install prometheus)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


class MetricsTarget(Protocol):
    """What the tests need from the process being scraped."""

    address: str  # host:port of its /metrics endpoint
    silent: frozenset[str]  # metrics it never exports, so queries on them may return nothing
    provokes: frozenset[str]  # alerts it can make fire while running (besides stalled/paused)

    def stall(self) -> None: ...  # no progress, not paused
    def pause(self) -> None: ...
    def resume(self) -> None: ...


TABLES = (("public.mcp_servers", "id"), ("public.mcp_tools", "server_id"))


@dataclass
class FakeBackfill:
    """Drives a real `Metrics` registry the way the backfill engine does, on a background thread."""

    address: str = ""
    silent: frozenset[str] = frozenset()
    provokes: frozenset[str] = frozenset(
        {"OnlineUuidReplicationLagHigh", "OnlineUuidErrorsRising", "OnlineUuidCutoverFailing"}
    )
    metrics: Metrics = field(default_factory=Metrics)
    state: str = "running"
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        port = free_port()
        self.metrics.serve(port, addr="127.0.0.1")
        self.address = f"127.0.0.1:{port}"
        m = self.metrics
        m.set_phase(Phase.BACKFILLING.value)
        for table, column in TABLES:
            m.rows_remaining.labels(table=table, column=column).set(5_000_000)
            m.rows_backfilled.labels(table=table, column=column)
        m.replication_lag.labels(replica="standby-1").set(12.5)  # above the 10s threshold
        m.replication_lag.labels(replica="standby-2").set(0.4)
        m.throttled.labels(reason="replication_lag").set(1)
        m.throttled.labels(reason="rate_limit").set(0)
        m.cutover_attempts.labels(outcome="success").inc()
        m.lock_held.set(0.35)
        threading.Thread(target=self._run, name="fake-backfill", daemon=True).start()

    def _run(self) -> None:
        m, rng, tick = self.metrics, random.Random(7), 0
        while not self.done.wait(0.1):
            tick += 1
            m.errors.labels(kind="lock_timeout").inc()  # 10/s: "errors rising"
            if tick % 5 == 0:
                m.cutover_attempts.labels(outcome="lock_timeout").inc()
            if self.state != "running":
                continue
            for table, column in TABLES:
                size = rng.randint(800, 1200)
                m.batch_size.labels(table=table).set(size)
                m.batch_duration.labels(table=table).observe(rng.uniform(0.05, 0.4))
                m.rows_backfilled.labels(table=table, column=column).inc(size)
                m.rows_remaining.labels(table=table, column=column).dec(size)
                m.dead_tuples.labels(table=table).set(rng.randint(1_000, 50_000))
            m.eta.set(5_000_000 / 10_000)

    def stall(self) -> None:
        self.state = "stalled"
        self.metrics.paused.set(0)

    def pause(self) -> None:
        self.state = "paused"
        self.metrics.paused.set(1)

    def resume(self) -> None:
        self.state = "running"
        self.metrics.paused.set(0)


@pytest.fixture(scope="module")
def metrics_target() -> Iterator[MetricsTarget]:
    # TODO(real backfill): swap FakeBackfill for a RealBackfill target with the same five
    # members: create a database on the session `pg_server` fixture (tests/conftest.py; the
    # per-test `dsn` fixture is function-scoped), seed it, run `online-uuid start
    # --no-backfill --table ...`, then Popen `online-uuid backfill --metrics-port PORT
    # --max-rows-per-second N` (slow enough to last the module; address = 127.0.0.1:PORT).
    # pause()/resume() = `online-uuid pause`/`resume`; stall() = resume, then hold
    # `LOCK TABLE ... IN EXCLUSIVE MODE` in another session so batches cannot commit.
    # silent = {"online_uuid_replication_lag_seconds", "online_uuid_cutover_attempts_total"}
    # (no standby, no cutover), provokes = frozenset(). Nothing else in this file changes.
    target = FakeBackfill()
    target.start()
    yield target
    target.done.set()


def shorten(rules: dict[str, Any]) -> dict[str, Any]:
    """The alert rules with every `for:` and range window cut to seconds."""
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = SHORT_FOR
            rule["expr"] = re.sub(r"\[\d+[smhd]\]", SHORT_WINDOW, rule["expr"])
    return rules


@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> dict[str, str]:
        return {a["labels"]["alertname"]: a["state"] for a in self.get("/api/v1/alerts")["alerts"]}


@pytest.fixture(scope="module")
def prometheus(
    metrics_target: MetricsTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("prometheus")
    rules = tmp / "alerts.yml"
    rules.write_text(yaml.safe_dump(shorten(yaml.safe_load((PROM_DIR / "alerts.yml").read_text()))))
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [metrics_target.address]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        def ready() -> bool:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                return bool(prom.query('up{job="online-uuid"} == 1'))
            except OSError:
                return False

        wait_for("prometheus to scrape the target", ready)
        # rate() over 1m needs two samples of each series; a few scrapes make it certain.
        wait_for("3 scrapes", lambda: bool(prom.query("count_over_time(up[1m]) >= 3")))
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def promtool(*args: str) -> None:
    proc = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_rules() -> None:
    promtool("check", "rules", str(PROM_DIR / "alerts.yml"))


def test_promtool_check_configs(tmp_path: Path) -> None:
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["rule_files"] = [str(PROM_DIR / f) for f in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    promtool("check", "config", str(tmp_path / "prometheus.yml"))


def test_promtool_check_kubernetes_scrape_config(tmp_path: Path) -> None:
    k8s = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "scrape-config.yaml").read_text())
    (tmp_path / "k8s.yml").write_text(yaml.safe_dump({"scrape_configs": k8s}))
    proc = subprocess.run(
        [PROMTOOL, "check", "config", str(tmp_path / "k8s.yml")],
        capture_output=True, text=True, check=False,
    )
    if "kubernetes_sd_configs not found" in proc.stdout + proc.stderr:
        pytest.skip("this promtool is built without Kubernetes service discovery (Debian's is)")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def substitute(expr: str) -> str:
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    return expr


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bonline_uuid_\w+", expr))


def silent(target: MetricsTarget, expr: str) -> bool:
    names = metric_names(expr)
    return bool(names) and names <= target.silent


DOC = json.loads(DASHBOARD.read_text())
TARGETS = [(p["title"], t["refId"], t["expr"]) for p in DOC["panels"] for t in p["targets"]]
VARIABLES = [v for v in DOC["templating"]["list"] if v["type"] == "query"]
RULES = [r for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
         for r in g["rules"]]


@pytest.mark.parametrize(("title", "ref", "expr"), TARGETS, ids=[f"{t}/{r}" for t, r, _ in TARGETS])
def test_dashboard_query_returns_data(
    prometheus: Prometheus, metrics_target: MetricsTarget, title: str, ref: str, expr: str
) -> None:
    result = prometheus.query(substitute(expr))
    assert result or silent(metrics_target, expr), f"{title}/{ref}: no data for {expr}"


@pytest.mark.parametrize("var", VARIABLES, ids=[v["name"] for v in VARIABLES])
def test_dashboard_variable_has_values(prometheus: Prometheus, var: dict[str, Any]) -> None:
    m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
    assert m, var["definition"]
    values = prometheus.get(f"/api/v1/label/{m[2]}/values", **{"match[]": substitute(m[1])})
    assert values, f"variable {var['name']} has no values"


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_alert_expression_is_valid_and_sees_data(
    prometheus: Prometheus, metrics_target: MetricsTarget, rule: dict[str, Any]
) -> None:
    prometheus.query(rule["expr"])  # status success: it parses and evaluates
    for name in metric_names(rule["expr"]):
        assert prometheus.query(name) or name in metrics_target.silent, f"{name}: no data"


def test_alerts_fire(prometheus: Prometheus, metrics_target: MetricsTarget) -> None:
    rules = prometheus.get("/api/v1/rules")["groups"][0]["rules"]
    assert {r["name"] for r in rules} == {r["alert"] for r in RULES}
    assert all(r["health"] == "ok" for r in rules), rules
    target = metrics_target
    target.resume()

    active = prometheus.alerts

    def firing(*names: str) -> Callable[[], bool]:
        return lambda: all(active().get(n) == "firing" for n in names)

    wait_for(f"{sorted(target.provokes)} to fire", firing(*target.provokes))
    assert "OnlineUuidBackfillStalled" not in active()

    target.stall()
    wait_for("the stalled-backfill alert", firing("OnlineUuidBackfillStalled"))
    assert "OnlineUuidPausedTooLong" not in active()

    target.pause()  # paused: the stall is deliberate, so it stops alerting
    wait_for("the paused alert", firing("OnlineUuidPausedTooLong"))
    wait_for("the stall alert to end", lambda: "OnlineUuidBackfillStalled" not in active())

    for alert in prometheus.get("/api/v1/alerts")["alerts"]:
        for text in alert["annotations"].values():
            assert "error expanding template" not in text, text
    target.resume()
