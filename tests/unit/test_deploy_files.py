"""Static checks of dashboards/ and deploy/: files parse, references resolve, metric names exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.core
import yaml  # type: ignore[import-untyped]

from online_uuid.cli import app
from online_uuid.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "kubernetes"
DASHBOARD = ROOT / "dashboards" / "online-uuid.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
TARGET_LABELS = {"instance", "job"}
SUFFIXES = {
    "counter": ("", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def exported() -> dict[str, str]:
    """Every series name online-uuid exports -> its METRICS key."""
    out: dict[str, str] = {}
    for name, (kind, _labels) in METRICS.items():
        base = name.removesuffix("_total") if kind == "counter" else name
        for suffix in SUFFIXES[kind]:
            out[name if suffix == "" else base + suffix] = name
    return out


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    return exprs + [v["query"] for v in doc["templating"]["list"] if v["type"] == "query"]


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"]]


def selectors(expr: str) -> list[tuple[str, list[str]]]:
    """(metric, matcher label names) of each `name{...}` or bare `name` in a PromQL string."""
    found = []
    for m in re.finditer(r"\b([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?", expr):
        name, body = m.group(1), m.group(2) or ""
        if body or name.startswith("online_uuid_"):
            found.append((name, re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body)))
    return found


ALL_EXPRS = [("dashboard", e) for e in dashboard_exprs()] + [
    ("alert " + r["alert"], r["expr"]) for r in alert_rules()
]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert docs and all(d is not None for d in docs), f"{path} is empty"


def test_dashboard_has_no_drift() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "dashboards" / "build.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_expr_names_only_exported_metrics_and_labels(where: str, expr: str) -> None:
    names = exported()
    sels = selectors(expr)
    assert sels, f"{where}: no metric in {expr!r}"
    allowed: set[str] = set(TARGET_LABELS)
    for name, matchers in sels:
        assert name in names, f"{where}: {name} is not a metric online-uuid exports"
        labels = (
            set(METRICS[names[name]][1]) | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        )
        assert set(matchers) <= labels, f"{where}: {name} has no label {set(matchers) - labels}"
        allowed |= labels
    for group in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
        used = {s.strip() for s in group.split(",") if s.strip()}
        assert used <= allowed, f"{where}: grouping by unknown labels {used - allowed}"


def test_every_metric_has_a_panel() -> None:
    names = exported()
    shown = {names[n] for e in dashboard_exprs() for n, _ in selectors(e)}
    assert set(METRICS) - shown == set()


def test_dashboard_shape() -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert 36 <= doc["schemaVersion"] <= 41 and doc["uid"] == "online-uuid"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"instance", "table"} <= set(variables)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "OnlineUuidBackfillStalled",
        "OnlineUuidReplicationLagHigh",
        "OnlineUuidErrorsRising",
        "OnlineUuidPausedTooLong",
        "OnlineUuidCutoverFailing",
    }
    for r in rules:
        assert r.get("for"), r["alert"]
        assert r["labels"]["severity"] in {"info", "warning", "critical"}, r["alert"]
        assert {"summary", "description", "runbook"} <= set(r["annotations"]), r["alert"]


def test_prometheus_config_references() -> None:
    conf = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    for rule_file in conf["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file(), rule_file
    targets = [t for s in conf["scrape_configs"] for c in s["static_configs"] for t in c["targets"]]
    assert "online-uuid:9187" in targets


def test_compose_references() -> None:
    compose = load_yaml(COMPOSE / "docker-compose.yml")
    services = compose["services"]
    assert {"postgres", "online-uuid", "prometheus", "grafana"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    build = services["online-uuid"]["build"]
    context = (COMPOSE / build["context"]).resolve()
    dockerfile = context / build["dockerfile"]
    assert dockerfile.is_file()
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (context / src).exists(), f"Dockerfile copies missing {src}"
    assert "9187" in services["online-uuid"]["command"]
    mounts: dict[str, Path] = {}
    for svc in services.values():
        for volume in svc.get("volumes", []):
            host, target = volume.split(":")[:2]
            if host.startswith("."):
                assert (COMPOSE / host).exists(), f"compose mounts missing {host}"
                mounts[target] = (COMPOSE / host).resolve()
    prom_dir = "/etc/prometheus"
    for rule_file in load_yaml(mounts[f"{prom_dir}/prometheus.yml"])["rule_files"]:
        assert f"{prom_dir}/{rule_file}" in mounts, f"compose does not mount {rule_file}"
    provisioning = mounts["/etc/grafana/provisioning"]
    datasource = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    for provider in load_yaml(provisioning / "dashboards" / "dashboards.yml")["providers"]:
        path = provider["options"]["path"]
        served = [t for t in mounts if t.startswith(path + "/")]
        assert served and all(mounts[t].is_file() for t in served), path
    assert mounts[f"{path}/online-uuid.json"] == DASHBOARD


def test_kubernetes_references() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    objects: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
        for doc in yaml.safe_load_all((K8S / resource).read_text(encoding="utf-8")):
            assert doc["apiVersion"] and doc["metadata"]["name"], resource
            objects[doc["kind"]] = doc
    assert {"Job", "Secret", "Service", "ServiceMonitor"} <= set(objects)
    pod = objects["Job"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "start" and "--table" in args
    assert args[args.index("--metrics-port") + 1] == "9187"
    env = {e["name"]: e for e in container["env"]}
    ref = env["ONLINE_UUID_DSN"]["valueFrom"]["secretKeyRef"]
    secret = objects["Secret"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = objects["Service"]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert [(p["name"], p["port"]) for p in service["ports"]] == [("metrics", ports["metrics"])]
    monitor = objects["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= objects["Service"]["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics"]
    scrape = load_yaml(K8S / "scrape-config.yaml")
    assert scrape[0]["job_name"] == "online-uuid"


def deployed_commands() -> list[tuple[str, list[str]]]:
    compose = load_yaml(COMPOSE / "docker-compose.yml")["services"]["online-uuid"]["command"]
    job = load_yaml(K8S / "job.yaml")["spec"]["template"]["spec"]["containers"][0]["args"]
    return [("compose", compose), ("kubernetes", job)]


@pytest.mark.parametrize(("where", "argv"), deployed_commands(), ids=["compose", "kubernetes"])
def test_deployed_commands_exist(where: str, argv: list[str]) -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    command = group.commands.get(argv[0])
    assert command is not None, f"{where}: online-uuid has no command {argv[0]!r}"
    options = {o for p in command.params for o in p.opts}
    missing = {a for a in argv[1:] if a.startswith("--") and a not in options}
    assert not missing, f"{where}: `online-uuid {argv[0]}` has no {sorted(missing)}"
