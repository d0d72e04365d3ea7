"""Every dashboard query and alert rule, run by a real Prometheus against a real running backfill.

Prometheus (Debian's, on loopback) scrapes two real exporters every second:

- `online-uuid backfill --metrics-port` in a process of its own, filling the guide's five demo
  tables at a slow fixed pace so it keeps running for the whole module. `--replica-dsn` names the
  primary itself (it reports a lag of 0), so the replication-lag series exist without a standby.
- the engine's cutover of a second, small demo migration: three swap attempts time out on a held
  lock, then one succeeds. It runs in this process with a `Metrics` served the way the CLI's
  `--metrics-port` serves it, because the CLI's exporter ends with its process, before
  Prometheus could scrape the outcome.

So every panel query and every alert expression is checked against data the engine exported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml  # type: ignore[import-untyped]
from psycopg import sql

from online_uuid import api, naming
from online_uuid.demo.data import load
from online_uuid.demo.schema import TABLES as DEMO_TABLES
from online_uuid.demo.schema import create_schema
from online_uuid.embedded import PgServer
from online_uuid.errors import LockTimeoutError
from online_uuid.metrics import METRICS, Metrics
from online_uuid.model import TableRef
from online_uuid.settings import CutoverSettings, LockSettings
from support.sessions import wait_for

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "dashboards" / "online-uuid.json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SUBSTITUTIONS = {"$instance": ".*", "$table": ".*", "$__rate_interval": "1m", "$datasource": ""}
SHORT_FOR, SHORT_WINDOW = "2s", "[5s]"

TABLES = [f"public.{t}" for t in DEMO_TABLES]
# 50k rows at 500 rows/s: the key columns alone take 100 s, the module needs about 30 s.
BACKFILL_ROWS, ROWS_PER_S, BATCH = 50_000, 500, 100
CUTOVER_ROWS = 2_000

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


def cli_env() -> dict[str, str]:
    """This environment minus online-uuid's own settings: only the command line counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONLINE_UUID_")}
    env.pop("DATABASE_URL", None)
    env["NO_COLOR"] = "1"
    return env


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "online_uuid.cli", *args]


def cli(*args: str) -> None:
    """`online-uuid ARGS` in a process of its own; it must succeed."""
    proc = subprocess.run(
        cli_argv(*args), capture_output=True, text=True, timeout=60, env=cli_env(), check=False
    )
    assert proc.returncode == 0, f"online-uuid {' '.join(args)}: {proc.stderr}"


@contextmanager
def demo_database(pg_server: PgServer, rows: int) -> Iterator[str]:
    """A new database holding the guide's five tables with about `rows` rows; dropped afterwards."""
    name = f"test_dashboard_{os.urandom(4).hex()}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        dsn = pg_server.dsn_for(name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_schema(conn)
            load(conn, rows=rows)
        yield dsn
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as admin:  # PostgreSQL 13+: FORCE
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class RealBackfill:
    """`online-uuid backfill --metrics-port` running on the demo tables, and ways to hold it."""

    def __init__(self, dsn: str, log: Path) -> None:
        self.dsn, self.log = dsn, log
        self.address = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.locker: psycopg.Connection[Any] | None = None

    def start(self) -> None:
        cli("start", "--no-backfill", "--dsn", self.dsn, *(a for t in TABLES for a in ("-t", t)))
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cli_argv(
                    "backfill",
                    "--dsn",
                    self.dsn,
                    "--metrics-port",
                    self.address.split(":")[1],
                    "--max-rows-per-second",
                    str(ROWS_PER_S),
                    "--max-batch-size",
                    str(BATCH),
                    "--replica-dsn",
                    self.dsn,
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=cli_env(),
            )
        wait_for(
            lambda: "online_uuid_rows_backfilled_total{" in self.scrape(),
            what="the backfill's first batch on /metrics",
            every=0.25,
        )

    def alive(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        return True

    def scrape(self) -> str:
        self.alive()
        try:
            with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            return ""

    def stall(self) -> None:
        """No progress, not paused: another session holds the tables, so no batch can write."""
        self.locker = psycopg.connect(self.dsn, application_name="dashboard-test/blocker")
        self.locker.execute("SET lock_timeout = '10s'")
        self.locker.execute(
            sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in TABLES)
            )
        )

    def pause(self) -> None:
        """`online-uuid pause`; the lock goes too, so the blocked batch ends and the pause shows."""
        cli("pause", "--dsn", self.dsn)
        self._release()

    def resume(self) -> None:
        self._release()
        cli("resume", "--dsn", self.dsn)

    def _release(self) -> None:
        if self.locker is not None:
            self.locker.close()  # rolls back: the lock is gone
            self.locker = None

    def stop(self) -> None:
        self._release()
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def metrics_target(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealBackfill]:
    with demo_database(pg_server, BACKFILL_ROWS) as dsn:
        target = RealBackfill(dsn, tmp_path_factory.mktemp("backfill") / "backfill.log")
        try:
            target.start()
            yield target
        finally:
            target.stop()


@contextmanager
def swap_held(dsn: str) -> Iterator[None]:
    """Make every swap time out after its LOCK TABLE, leaving the online preparation alone.

    The swap drops the FK triggers' functions; COMMENT ON locks one of them until rollback, and
    nothing before the swap (verify, the online preparation) needs it.
    """
    servers = TableRef("public", "mcp_servers")
    fn = naming.function_name(servers, naming.fk_trigger(servers, "connector_id"))
    with psycopg.connect(dsn, application_name="dashboard-test/swap-holder") as hold:
        hold.execute(
            sql.SQL("COMMENT ON FUNCTION {}() IS 'held by the test'").format(
                sql.Identifier(naming.STATE_SCHEMA, fn)
            )
        )
        yield
        hold.rollback()


@pytest.fixture(scope="module")
def cutover_target(pg_server: PgServer) -> Iterator[str]:
    """host:port of a finished real cutover's metrics: 3 lock timeouts, then a success."""
    with demo_database(pg_server, CUTOVER_ROWS) as dsn:
        api.start(dsn, TABLES)  # expand and backfill
        port = free_port()
        metrics = Metrics()
        server = metrics.serve(port, addr="127.0.0.1")
        try:
            failing = CutoverSettings(lock=LockSettings(lock_timeout_ms=100, max_attempts=3))
            with swap_held(dsn), pytest.raises(LockTimeoutError, match="gave up after 3 attempts"):
                api.cutover(dsn, settings=failing, metrics=metrics)
            api.cutover(dsn, metrics=metrics)
            yield f"127.0.0.1:{port}"
        finally:
            server.shutdown()
            server.server_close()


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
    metrics_target: RealBackfill, cutover_target: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    targets = [metrics_target.address, cutover_target]
    tmp = tmp_path_factory.mktemp("prometheus")
    rules = tmp / "alerts.yml"
    rules.write_text(yaml.safe_dump(shorten(yaml.safe_load((PROM_DIR / "alerts.yml").read_text()))))
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    config["scrape_configs"][0]["static_configs"] = [{"targets": targets}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                return bool(prom.query(f'count(up{{job="online-uuid"}} == 1) == {len(targets)}'))
            except OSError:
                return False

        wait_for(ready, what="prometheus to scrape both targets", every=0.25)
        # rate() over 1m needs two samples of each series; a few scrapes make it certain.
        scrapes = 'min(count_over_time(up{job="online-uuid"}[1m])) >= 3'
        wait_for(lambda: bool(prom.query(scrapes)), what="3 scrapes of each target", every=0.25)
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
        capture_output=True,
        text=True,
        check=False,
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


DOC = json.loads(DASHBOARD.read_text())
TARGETS = [(p["title"], t["refId"], t["expr"]) for p in DOC["panels"] for t in p["targets"]]
VARIABLES = [v for v in DOC["templating"]["list"] if v["type"] == "query"]
RULES = [r for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"] for r in g["rules"]]


@pytest.mark.parametrize(("title", "ref", "expr"), TARGETS, ids=[f"{t}/{r}" for t, r, _ in TARGETS])
def test_dashboard_query_returns_data(prometheus: Prometheus, title: str, ref: str, expr: str) -> None:
    assert prometheus.query(substitute(expr)), f"{title}/{ref}: no data for {expr}"


@pytest.mark.parametrize("var", VARIABLES, ids=[v["name"] for v in VARIABLES])
def test_dashboard_variable_has_values(prometheus: Prometheus, var: dict[str, Any]) -> None:
    m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"])
    assert m, var["query"]
    values = prometheus.get(f"/api/v1/label/{m[2]}/values", **{"match[]": substitute(m[1])})
    assert values, f"variable {var['name']} has no values"


def test_table_variable_matches_every_per_table_series(prometheus: Prometheus) -> None:
    """`$table` takes its values from one metric; every metric with a `table` label must use them."""
    tables = set(prometheus.get("/api/v1/label/table/values", **{"match[]": "online_uuid_rows_remaining"}))
    assert tables == set(TABLES)  # schema-qualified, as the engine prints table names
    for name, (kind, labels) in METRICS.items():
        if "table" in labels:
            series = f"{name}_count" if kind == "histogram" else name
            got = {r["metric"]["table"] for r in prometheus.query(series)}
            assert got and got <= tables, (series, got)


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_alert_expression_is_valid_and_sees_data(prometheus: Prometheus, rule: dict[str, Any]) -> None:
    prometheus.query(rule["expr"])  # status success: it parses and evaluates
    for name in metric_names(rule["expr"]):
        assert prometheus.query(name), f"{name}: no data"


def test_alerts_fire(prometheus: Prometheus, metrics_target: RealBackfill) -> None:
    rules = prometheus.get("/api/v1/rules")["groups"][0]["rules"]
    assert {r["name"] for r in rules} == {r["alert"] for r in RULES}
    assert all(r["health"] == "ok" for r in rules), rules
    target = metrics_target
    target.resume()

    active = prometheus.alerts

    def firing(name: str) -> Callable[[], bool]:
        return lambda: target.alive() and active().get(name) == "firing"

    assert "OnlineUuidBackfillStalled" not in active()

    target.stall()
    wait_for(firing("OnlineUuidBackfillStalled"), what="the stalled-backfill alert", every=0.25)
    assert "OnlineUuidPausedTooLong" not in active()
    # The stall is real: the backfill's batches wait for the lock, time out and are retried.
    assert prometheus.query('online_uuid_errors_total{kind="lock_timeout"} > 0')

    target.pause()  # paused: the stall is deliberate, so it stops alerting
    wait_for(firing("OnlineUuidPausedTooLong"), what="the paused alert", every=0.25)
    wait_for(lambda: "OnlineUuidBackfillStalled" not in active(), what="the stall alert to end", every=0.25)

    for alert in prometheus.get("/api/v1/alerts")["alerts"]:
        for text in alert["annotations"].values():
            assert "error expanding template" not in text, text
    target.resume()
