"""Prometheus operator objects, alert rules, the compose Prometheus config and
the Grafana dashboard: structure, promtool, and the metric-name contract.

Also checks deploy-tests/metric_names.txt: the contract metrics the dashboard
and the alerts depend on (base names, histograms without _bucket/_sum/_count),
one per line, for the Rust end-to-end suite to check against a live /metrics.
It fails (and never rewrites the file) when the file is out of date: a
checked-in list that fixes itself would hide a change to the contract.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import objects
from contract import BINARIES, DOCKER, HISTOGRAMS, K8S, METRICS, MONITORED_OVERLAYS, TESTS, base_metric_name
from promql import metric_names, substitute_grafana_variables

DASHBOARD = DOCKER / "grafana" / "dashboards" / "kai.json"
PROMETHEUS_YML = DOCKER / "prometheus" / "prometheus.yml"
METRIC_NAMES_FILE = TESTS / "metric_names.txt"
ALERT_UNIT_TESTS = TESTS / "promtool" / "kai-alerts.test.yml"


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


# --- ServiceMonitor ------------------------------------------------------------


MONITORED = [f"overlays/{o}" for o in MONITORED_OVERLAYS]


@pytest.mark.parametrize("target", MONITORED)
def test_one_servicemonitor_per_service(target):
    sms = objects(target, "ServiceMonitor")
    services = {s["metadata"]["name"]: s for s in objects(target, "Service")}
    covered = set()
    for sm in sms:
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [n for n, s in services.items() if sel.items() <= s["metadata"].get("labels", {}).items()]
        assert len(matched) == 1, f"ServiceMonitor {sm['metadata']['name']} selects {matched}"
        svc = services[matched[0]]
        port_names = {p["name"] for p in svc["spec"]["ports"]}
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        covered.add(matched[0])
    assert covered == set(BINARIES)


@pytest.mark.parametrize("target", MONITORED)
def test_servicemonitor_labels_do_not_clash(target):
    """The series' own `service` and `namespace` (SPEC §5) and the target's
    Kubernetes namespace/Service must both survive, under distinct names:
    honorLabels would let ours overwrite the Kubernetes namespace; without the
    relabeling ours would be renamed exported_*."""
    for sm in objects(target, "ServiceMonitor"):
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint.get("honorLabels", False) is False
        relabel = endpoint["relabelings"]
        moved = {r["sourceLabels"][0]: r["targetLabel"] for r in relabel if r.get("targetLabel")}
        assert moved == {"namespace": "kubernetes_namespace", "service": "kubernetes_service"}
        drops = [r for r in relabel if r.get("action") == "labeldrop"]
        assert [d["regex"] for d in drops] == ["namespace|service"]
        assert relabel.index(drops[0]) == len(relabel) - 1, "drop after copying"


@pytest.mark.parametrize("target", MONITORED)
def test_operator_objects_carry_the_release_label(target):
    for o in objects(target, "ServiceMonitor") + objects(target, "PrometheusRule"):
        assert o["metadata"]["labels"].get("release"), f"{o['kind']}/{o['metadata']['name']}: no release label"


# --- PrometheusRule ------------------------------------------------------------


def prometheus_rule(target: str = MONITORED[0]) -> dict:
    (rule,) = objects(target, "PrometheusRule")
    return rule


def all_rules(target: str = MONITORED[0]) -> list[dict]:
    return [r for g in prometheus_rule(target)["spec"]["groups"] for r in g["rules"]]


@pytest.mark.parametrize("target", MONITORED)
def test_prometheusrule_structure(target):
    spec = prometheus_rule(target)["spec"]
    names = [g["name"] for g in spec["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    for g in spec["groups"]:
        assert g["rules"], g["name"]
        for r in g["rules"]:
            assert ("alert" in r) != ("record" in r)
            assert isinstance(r["expr"], str) and r["expr"].strip()
            if "alert" in r:
                assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"])
                assert r["labels"]["severity"] in ("info", "warning", "critical")
                assert {"summary", "description"} <= r["annotations"].keys()
                assert re.fullmatch(r"\d+[smh]", r.get("for", "0s"))


REQUIRED_ALERTS = {
    # alert name -> metric its expression (through recording rules) rests on
    "KaiAvailabilityBudgetBurnFast": "kai_http_requests_total",
    "KaiAvailabilityBudgetBurnSlow": "kai_http_requests_total",
    "KaiLatencyBudgetBurnFast": "kai_http_requests_duration_seconds",
    "KaiLatencyBudgetBurnSlow": "kai_http_requests_duration_seconds",
    "KaiLlmErrors": "kai_llm_requests_total",
    "KaiCacheHitRateLow": "kai_cache_hits_total",
    "KaiCacheErrors": "kai_cache_errors_total",
    "KaiDbPoolWaiting": "kai_db_pool_connections",
    "KaiDbPoolSaturated": "kai_db_pool_connections",
    "KaiRedisDegraded": "kai_redis_up",
    "KaiSlowQueries": "kai_db_slow_queries_total",
}
LLM_ROUTE = 'endpoint="/api/conversations/{id}/messages", method="POST"'
RUNBOOKS = TESTS.parent / "docs" / "runbooks"


def recording_rules() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in all_rules():
        if "record" in r:
            out.setdefault(r["record"], []).append(r)
    return out


def is_recording_rule(name: str) -> bool:
    return ":" in name


def expand(expr: str, depth: int = 0) -> set[str]:
    """Metric names an expression reads, through the recording rules it uses."""
    assert depth < 5, "recording rules nest too deep"
    out = set()
    rules = recording_rules()
    for m in metric_names(expr):
        if is_recording_rule(m):
            assert m in rules, f"unknown recording rule {m}"
            for r in rules[m]:
                out |= expand(r["expr"], depth + 1)
        else:
            out.add(base_metric_name(m))
    return out


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for r in all_rules() if "alert" in r}


def test_the_alerts_are_the_designed_set():
    assert set(alerts()) == set(REQUIRED_ALERTS)


@pytest.mark.parametrize("alert,metric", sorted(REQUIRED_ALERTS.items()))
def test_required_alerts(alert, metric):
    assert metric in expand(alerts()[alert]["expr"])


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_every_alert_has_a_runbook_in_the_repository(alert):
    url = alerts()[alert]["annotations"]["runbook_url"]
    assert url.startswith("https://") and url.endswith(f"/docs/runbooks/{alert}.md"), url
    runbook = RUNBOOKS / f"{alert}.md"
    assert runbook.is_file(), f"{runbook} missing"
    text = runbook.read_text()
    assert text.startswith(f"# {alert}\n")
    for section in ("## What it means", "## What to do"):
        assert section in text, f"{runbook}: no {section!r}"


def test_slis_count_user_traffic_only():
    """Probes (/health*), scrapes (/metrics), /docs and unmatched paths are not
    user traffic: every HTTP selector in the SLO rules is limited to /api/."""
    for name, rules in recording_rules().items():
        for r in rules:
            for sel in re.findall(r"kai_http_requests_\w+\{([^}]*)\}", r["expr"]):
                assert 'endpoint=~"/api/.+"' in sel or 'endpoint="/api/' in sel, f"{name}: {sel}"
    for name, r in alerts().items():
        assert "kai_http_requests" not in r["expr"], f"{name} reads HTTP metrics directly, not through the SLIs"


def test_llm_route_has_its_own_latency_objective():
    slow = recording_rules()["service_slo:kai_slow_request_ratio:rate5m"]
    by_slo = {r["labels"]["slo"]: r["expr"] for r in slow}
    assert set(by_slo) == {"api", "llm"}
    # the API objective subtracts the LLM route from numerator and denominator
    assert by_slo["api"].count("unless") == 2 and by_slo["api"].count(LLM_ROUTE) == 2
    assert 'le="0.5"' in by_slo["api"]
    # the LLM objective reads that route only
    assert by_slo["llm"].count(LLM_ROUTE) == 2 and "/api/.+" not in by_slo["llm"]


def test_burn_rate_alerts_use_a_long_and_a_short_window():
    for name in ("KaiAvailabilityBudgetBurnFast", "KaiLatencyBudgetBurnFast"):
        e = alerts()[name]["expr"]
        assert ":rate1h" in e and ":rate5m" in e and re.search(r"\band\b", e) and "14.4" in e, name
    for name in ("KaiAvailabilityBudgetBurnSlow", "KaiLatencyBudgetBurnSlow"):
        e = alerts()[name]["expr"]
        assert ":rate6h" in e and ":rate30m" in e and re.search(r"\band\b", e), name


def test_llm_alert_counts_errors_and_timeouts():
    rule = recording_rules()["service:kai_llm_failure_ratio:rate5m"][0]["expr"]
    assert 'outcome=~"error|timeout"' in rule
    assert "service:kai_llm_failure_ratio:rate5m" in alerts()["KaiLlmErrors"]["expr"]


def test_alert_expressions_use_contract_metrics_only():
    for r in all_rules():
        names = {m for m in metric_names(r["expr"]) if not is_recording_rule(m)}
        unknown = {m for m in names if base_metric_name(m) not in METRICS}
        assert not unknown, f"{r.get('alert') or r.get('record')}: unknown metrics {unknown}"
        for m in names:
            if base_metric_name(m) in HISTOGRAMS:
                assert m != base_metric_name(m), f"histogram {m} must be used with _bucket/_sum/_count"
        expand(r["expr"])  # every recording rule it names exists


def test_recording_rules_are_shared_by_alerts_and_dashboard():
    used_by_alerts = {m for r in alerts().values() for m in metric_names(r["expr"]) if is_recording_rule(m)}
    used_by_rules = {m for rs in recording_rules().values() for r in rs for m in metric_names(r["expr"])
                     if is_recording_rule(m)}
    used_by_dashboard = {m for _, e in dashboard_exprs() for m in metric_names(e) if is_recording_rule(m)}
    unknown = used_by_dashboard - set(recording_rules())
    assert not unknown, f"the dashboard queries undefined recording rules {unknown}"
    assert len(used_by_alerts & used_by_dashboard) >= 4, used_by_alerts & used_by_dashboard
    unused = set(recording_rules()) - used_by_alerts - used_by_dashboard - used_by_rules
    assert not unused, f"recording rules nobody reads: {unused}"


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory) -> Path:
    """The PrometheusRule spec written out as a plain Prometheus rules file."""
    d = tmp_path_factory.mktemp("rules")
    (d / "kai-rules.yml").write_text(yaml.safe_dump(prometheus_rule()["spec"], sort_keys=False))
    return d


def test_promtool_check_rules(promtool, rules_dir):
    proc = run([promtool, "check", "rules", str(rules_dir / "kai-rules.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_alert_unit_tests(promtool, rules_dir):
    shutil.copy(ALERT_UNIT_TESTS, rules_dir / ALERT_UNIT_TESTS.name)
    proc = run([promtool, "test", "rules", ALERT_UNIT_TESTS.name], cwd=rules_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _duration(s: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", s))


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_every_alert_fires_and_stays_quiet_in_unit_tests(alert):
    """A promtool case where it fires, and one where it is evaluated after its
    `for` and stays quiet."""
    wait = _duration(alerts()[alert].get("for", "0s"))
    fires = quiet = False
    for case in yaml.safe_load(ALERT_UNIT_TESTS.read_text())["tests"]:
        for t in case.get("alert_rule_test", []):
            if t["alertname"] != alert:
                continue
            if t["exp_alerts"]:
                fires = True
            elif _duration(t["eval_time"]) >= wait:
                quiet = True
    assert fires, f"{alert}: no promtool test fires it"
    assert quiet, f"{alert}: no promtool test shows it quiet after its `for`"


def test_compose_rules_equal_the_prometheusrule():
    """docker/prometheus/rules/kai-rules.yml is the PrometheusRule's spec."""
    import write_compose_rules

    assert write_compose_rules.TARGET.is_file()
    assert write_compose_rules.TARGET.read_text() == write_compose_rules.content(), (
        "docker/prometheus/rules/kai-rules.yml is out of date: python3 deploy-tests/write_compose_rules.py"
    )
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert cfg["rule_files"] == ["rules/kai-rules.yml"]


# --- compose Prometheus --------------------------------------------------------


def test_prometheus_config_scrapes_all_services():
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = {}
    for job in cfg["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                targets[t] = job.get("metrics_path", "/metrics")
    for binary, port in BINARIES.items():
        host = binary.removesuffix("-service")
        assert targets.get(f"{host}:{port}") == "/metrics", f"{host}:{port} not scraped at /metrics"


def test_promtool_check_config(promtool):
    proc = run([promtool, "check", "config", str(PROMETHEUS_YML)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- Grafana -------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_exprs(d: dict) -> list[tuple[str, str]]:
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(d["panels"])
    return out


def variable_exprs(d: dict) -> list[tuple[str, str]]:
    out = []
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\)\s*", q)
        out.append((f"${v['name']}", m.group(1) if m else q))
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    d = dashboard()
    return panel_exprs(d) + variable_exprs(d)


def test_dashboard_is_valid_json_with_panels():
    d = dashboard()
    assert d["uid"] and d["title"]
    assert panel_exprs(d), "dashboard has no queries"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_provisioning():
    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (prom,) = [s for s in ds["datasources"] if s["type"] == "prometheus"]
    assert prom["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/kai.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    # the compose file mounts docker/grafana/dashboards there
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    d = dashboard()
    var_default = [v for v in d["templating"]["list"] if v["type"] == "datasource"][0]["current"]["value"]
    assert var_default == prom["uid"]


@pytest.mark.parametrize("needle", [
    "service:kai_api_requests:rate5m",              # request rate
    "service:kai_api_error_ratio:rate5m",           # 5xx share (availability SLI)
    "service_slo:kai_slow_request_ratio:rate5m",    # latency SLIs
    "service:kai_llm_failure_ratio:rate5m",         # LLM failures
    "histogram_quantile(0.50",                      # p50
    "histogram_quantile(0.95",                      # p95
    "histogram_quantile(0.99",                      # p99
    "kai_http_requests_duration_seconds_bucket",
    "sum by (namespace) (rate(kai_cache_hits_total",  # hit rate per namespace
    "kai_cache_misses_total",
    "kai_db_pool_connections",                      # pool usage
    "kai_db_slow_queries_total",                    # slow queries
    "sum by (outcome) (rate(kai_llm_requests_total",  # LLM calls by outcome
])
def test_dashboard_covers(needle):
    assert any(needle in e for _, e in panel_exprs(dashboard())), needle


def test_latency_per_endpoint():
    exprs = [e for _, e in panel_exprs(dashboard()) if "kai_http_requests_duration_seconds_bucket" in e]
    for q in ("0.50", "0.95", "0.99"):
        assert any(f"histogram_quantile({q}" in e and "endpoint" in e.split("by (")[1].split(")")[0] for e in exprs), q


def test_dashboard_uses_contract_metrics_only():
    for where, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        expand(expr)  # recording rules it names exist
        names = {m for m in names if not is_recording_rule(m)}
        unknown = {m for m in names if base_metric_name(m) not in METRICS}
        assert not unknown, f"{where}: unknown metrics {unknown} in {expr!r}"
        for m in names:
            if base_metric_name(m) in HISTOGRAMS:
                assert m != base_metric_name(m), f"{where}: histogram {m} without _bucket/_sum/_count"


def test_dashboard_queries_parse(promtool, tmp_path):
    """promtool parses every dashboard query (Grafana variables substituted),
    by checking them as recording rules."""
    rules = [{"record": f"kai:dashboard:{i}", "expr": substitute_grafana_variables(expr)}
             for i, (_, expr) in enumerate(panel_exprs(dashboard()))]
    f = tmp_path / "dashboard-rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([promtool, "check", "rules", str(f)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- metric_names.txt ------------------------------------------------------------


def used_metric_names() -> list[str]:
    exprs = [e for _, e in dashboard_exprs()] + [r["expr"] for r in all_rules()]
    return sorted({base_metric_name(m) for e in exprs for m in metric_names(e) if not is_recording_rule(m)})


def test_metric_names_file():
    """deploy-tests/metric_names.txt lists exactly what the dashboard and the
    rules query. Out of date = failure, with the content it should have."""
    names = used_metric_names()
    assert set(names) <= METRICS
    content = "\n".join(names) + "\n"
    current = METRIC_NAMES_FILE.read_text() if METRIC_NAMES_FILE.exists() else ""
    assert current == content, (
        f"{METRIC_NAMES_FILE} is out of date; it must read exactly:\n{content}"
    )
    # everything the contract promises is watched somewhere
    assert set(names) == METRICS, f"contract metrics not on the dashboard or in alerts: {METRICS - set(names)}"


# --- annotation-based scraping (k8s/README.md) --------------------------------------


def readme_scrape_job() -> str:
    text = (K8S / "README.md").read_text()
    m = re.search(r"```yaml\n# kai-annotation-scrape-job\n(.*?)```", text, re.S)
    assert m, "k8s/README.md: the annotation-based scrape job is gone"
    return m.group(1)


def test_readme_annotation_job_is_a_valid_prometheus_config(promtool, tmp_path):
    """promtool checks the job, its relabelings included. Debian's promtool is
    built without Kubernetes service discovery ("field kubernetes_sd_configs
    not found"): that one block is checked here by hand and swapped for a
    static target."""
    cfg = yaml.safe_load(readme_scrape_job())
    (job,) = cfg["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["pod.example:8081"]}]
    f = tmp_path / "prometheus.yml"
    f.write_text(yaml.safe_dump(cfg))
    proc = run([promtool, "check", "config", str(f)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_annotation_job_reads_the_annotations_and_can_drop_kai():
    (job,) = yaml.safe_load(readme_scrape_job())["scrape_configs"]
    rules = job["relabel_configs"]
    sources = {s for r in rules for s in r.get("source_labels", [])}
    for ann in ("scrape", "port", "path"):
        assert f"__meta_kubernetes_pod_annotation_prometheus_io_{ann}" in sources
    drops = [r for r in rules if r.get("action") == "drop"]
    assert [d["source_labels"] for d in drops] == [["__meta_kubernetes_pod_label_app_kubernetes_io_part_of"]]
    assert drops[0]["regex"] == "kai"
    targets = {r["target_label"] for r in rules if r.get("target_label")}
    assert {"namespace", "service"} <= targets
