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
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import objects
from contract import (
    BINARIES,
    DOCKER,
    EXTERNAL_METRICS,
    HISTOGRAMS,
    K8S,
    METRICS,
    MONITORED_OVERLAYS,
    PARTIAL_METRICS,
    TESTS,
    base_metric_name,
)
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


# The relabelings every scrape path applies to Kai's series (ServiceMonitor,
# compose, the annotation job in k8s/README.md): the cache namespace out of
# the way of the Kubernetes one, the duplicate `service` dropped.
KAI_METRIC_RELABELING = [
    {"source_labels": ["exported_namespace"], "target_label": "cache_namespace"},
    {"regex": "exported_namespace|exported_service", "action": "labeldrop"},
]


def _snake(d: dict) -> dict:
    """ServiceMonitor camelCase relabel config -> Prometheus snake_case."""
    return {re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k): v for k, v in d.items()}


@pytest.mark.parametrize("target", MONITORED)
def test_servicemonitors_keep_the_kubernetes_namespace(target):
    """`namespace` is the Kubernetes namespace (the operator's target label,
    never relabeled or dropped), `service` the Kai service's short name (on
    `up` too), the cache metrics' own namespace becomes cache_namespace.
    honorLabels would let the cache namespace overwrite the Kubernetes one."""
    for sm in objects(target, "ServiceMonitor"):
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint.get("honorLabels", False) is False
        relabel = endpoint.get("relabelings", [])
        for r in relabel:
            assert r.get("targetLabel") != "namespace", r
            assert r.get("action") not in ("labeldrop", "labelkeep", "labelmap"), r
        (svc,) = [r for r in relabel if r.get("targetLabel") == "service"]
        assert svc["sourceLabels"] == ["__meta_kubernetes_service_label_app_kubernetes_io_name"]
        assert re.fullmatch(svc["regex"], sm["metadata"]["name"]).group(1) in {b.removesuffix("-service") for b in BINARIES}
        assert [_snake(r) for r in endpoint["metricRelabelings"]] == KAI_METRIC_RELABELING


def test_every_scrape_path_labels_alike():
    """compose and the README's annotation job: job <name>-service, service
    and namespace target labels, the same metric relabeling."""
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    kai_jobs = [j for j in cfg["scrape_configs"] if j["job_name"] != "prometheus"]
    assert {j["job_name"] for j in kai_jobs} == set(BINARIES)
    for j in kai_jobs:
        (sc,) = j["static_configs"]
        assert sc["labels"]["service"] == j["job_name"].removesuffix("-service")
        assert sc["labels"]["namespace"]
        assert j["metric_relabel_configs"] == KAI_METRIC_RELABELING
    (job,) = yaml.safe_load(readme_scrape_job())["scrape_configs"]
    assert job["metric_relabel_configs"] == KAI_METRIC_RELABELING


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
    "KaiServiceDown": "kube_deployment_status_replicas_available",
    **{f"KaiAvailabilityBudgetBurn{w}": "kai_http_requests_total" for w in ("1h", "6h", "1d", "3d")},
    **{f"KaiLatencyBudgetBurn{w}": "kai_http_requests_duration_seconds" for w in ("1h", "6h", "1d", "3d")},
    "KaiLlmErrors": "kai_llm_requests_total",
    "KaiCacheHitRateDropped": "kai_cache_hits_total",
    "KaiCacheErrors": "kai_cache_errors_total",
    "KaiDbPoolWaiting": "kai_db_pool_connections",
    "KaiDbPoolSaturated": "kai_db_pool_max_connections",
    "KaiRedisDegraded": "kai_redis_up",
    "KaiDbReplicaLagging": "kai_db_replica_lag_seconds",
    "KaiRedisPoolSaturated": "kai_redis_pool_max_connections",
    "KaiCacheSubscriptionFlapping": "kai_cache_subscriptions_total",
    "KaiErasureStalled": "kai_erasure_oldest_pending_seconds",
    "KaiEventsFailing": "kai_events_failures_total",
    "KaiEventsRejected": "kai_events_rejected_total",
    "KaiSlowQueries": "kai_db_slow_queries_total",
}
# The four burn-rate tiers (SRE workbook): long window, short window, burn
# rate, severity (critical pages, warning is a ticket).
BURN_TIERS = [("1h", "5m", "14.4", "critical"), ("6h", "30m", "6", "critical"),
              ("1d", "2h", "3", "warning"), ("3d", "6h", "1", "warning")]
WINDOW_WORDS = {"5m": "5 minutes", "30m": "30 minutes", "1h": "hour", "2h": "2 hours", "6h": "6 hours",
                "1d": "day", "3d": "3 days"}
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
    slow = recording_rules()["namespace_service_slo:kai_slow_request_ratio:rate5m"]
    by_slo = {r["labels"]["slo"]: r["expr"] for r in slow}
    assert set(by_slo) == {"api", "llm"}
    requests = {r["labels"]["slo"]: r["expr"] for r in recording_rules()["namespace_service_slo:kai_requests:rate5m"]}
    assert set(requests) == {"api", "llm"}
    # the API objective subtracts the LLM route from numerator and denominator
    assert by_slo["api"].count("unless") == 1 and by_slo["api"].count(LLM_ROUTE) == 1
    assert 'le="0.5"' in by_slo["api"] and 'namespace_service_slo:kai_requests:rate5m{slo="api"}' in by_slo["api"]
    assert requests["api"].count("unless") == 1 and requests["api"].count(LLM_ROUTE) == 1
    # the LLM objective reads that route only
    assert by_slo["llm"].count(LLM_ROUTE) == 1 and "/api/.+" not in by_slo["llm"]
    assert requests["llm"].count(LLM_ROUTE) == 1 and "/api/.+" not in requests["llm"]


@pytest.mark.parametrize("family,ratio,requests,budget", [
    ("Availability", "namespace_service:kai_api_error_ratio", "namespace_service:kai_api_requests", "0.001"),
    ("Latency", "namespace_service_slo:kai_slow_request_ratio", "namespace_service_slo:kai_requests", "0.01"),
])
def test_four_burn_rate_windows_with_a_minimum_traffic_guard(family, ratio, requests, budget):
    """14.4x 1h/5m and 6x 6h/30m page, 3x 1d/2h and 1x 3d/6h open a ticket;
    each is silent while its long window holds fewer than 5 / (burn x budget)
    requests (one 5xx at one request a minute pages nobody)."""
    names = {a for a in alerts() if a.startswith(f"Kai{family}BudgetBurn")}
    assert names == {f"Kai{family}BudgetBurn{t[0]}" for t in BURN_TIERS}
    for long, short, burn, severity in BURN_TIERS:
        r = alerts()[f"Kai{family}BudgetBurn{long}"]
        e = re.sub(r"#[^\n]*", "", r["expr"])
        terms = [x.strip() for x in re.split(r"\band\b", e)]
        assert terms == [
            f"{ratio}:rate{long} > ({burn} * {budget})",
            f"{ratio}:rate{short} > ({burn} * {budget})",
            f"{requests}:rate{long} > 5 / ({burn} * {budget} * {_duration(long)})",
        ], terms
        assert r["labels"]["severity"] == severity


def test_namespace_is_kept_in_every_aggregation():
    """Staging and prod on one Prometheus are two SLIs: every aggregation keeps
    the Kubernetes `namespace`, every recording rule says so in its name."""
    for r in all_rules():
        name = r.get("alert") or r.get("record")
        e = re.sub(r"#[^\n]*", "", r["expr"])
        assert not re.search(r"\bwithout\s*\(", e), name
        for agg in re.finditer(r"(?<![A-Za-z_])(sum|max|min|avg|count|group|stddev|topk|bottomk|quantile)\s*(by\s*\(([^)]*)\))?\s*\(", e):
            assert agg.group(2), f"{name}: {agg.group(0)} aggregates the namespace away"
            labels = {x.strip() for x in agg.group(3).split(",")}
            assert "namespace" in labels, f"{name}: {agg.group(0)}"
        if "record" in r:
            assert r["record"].startswith("namespace_"), r["record"]


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_descriptions_print_what_they_say(alert):
    """Summaries name the namespace; a description that prints `$value` names
    the window of the value it prints: the first operand's (a burn-rate
    alert's long window), and no other window before its "(alert: ...)"."""
    r = alerts()[alert]
    assert "{{ $labels.namespace }}" in r["annotations"]["summary"]
    desc = r["annotations"]["description"]
    if "$value" not in desc:
        return
    first = re.sub(r"#[^\n]*", "", r["expr"]).strip()
    m = re.match(r"(?:avg_over_time\()?([a-z_:]+:rate(\d+[mhd]))", first)
    if m:
        said = desc.split("(alert:")[0]
        assert f"over the last {WINDOW_WORDS[m.group(2)]}" in said, f"{alert}: prints {m.group(1)}: {said!r}"
        for other, words in WINDOW_WORDS.items():
            if other != m.group(2):
                assert not re.search(rf"the last {words}\b", said), f"{alert}: {said!r}"


def test_llm_alert_counts_errors_and_timeouts():
    rule = recording_rules()["namespace_service:kai_llm_failure_ratio:rate5m"][0]["expr"]
    assert 'outcome=~"error|timeout"' in rule
    assert "namespace_service:kai_llm_failure_ratio:rate5m" in alerts()["KaiLlmErrors"]["expr"]


def test_outage_alert_reads_readiness_and_scrapes():
    """A full outage pages: no ready replica (kube-state-metrics) or no replica
    answering a scrape (`up`), per namespace and service, critical, within 5
    minutes (`for` plus scrape and evaluation intervals)."""
    r = alerts()["KaiServiceDown"]
    assert {"kube_deployment_status_replicas_available", "up"} <= metric_names(r["expr"])
    assert r["labels"]["severity"] == "critical"
    assert _duration(r["for"]) + 30 + 30 <= 5 * 60


def test_pool_saturation_is_measured_against_the_maximum():
    expr = recording_rules()["namespace_service_pod:kai_db_pool_usage:ratio"][0]["expr"]
    assert 'kai_db_pool_connections{state="in_use"}' in expr and "kai_db_pool_max_connections" in expr
    assert "idle" not in expr


def test_cache_alert_is_relative_to_its_own_baseline():
    e = re.sub(r"#[^\n]*", "", alerts()["KaiCacheHitRateDropped"]["expr"])
    assert "offset 1h" in e and "[1d]" in e, "a baseline from the cache namespace's own recent past"
    assert re.search(r"<\s*0\.6\s*\*", e), "a share of the baseline, not a fixed floor"


def test_alert_expressions_use_contract_metrics_only():
    for r in all_rules():
        names = {m for m in metric_names(r["expr"]) if not is_recording_rule(m)}
        unknown = {m for m in names if base_metric_name(m) not in METRICS | EXTERNAL_METRICS}
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


@pytest.mark.skipif(os.environ.get("KAI_PROMTOOL_RULE_TESTS") == "passed",
                    reason="run and passed by scripts/check-deploy just before")
def test_promtool_alert_unit_tests(promtool, rules_dir):
    shutil.copy(ALERT_UNIT_TESTS, rules_dir / ALERT_UNIT_TESTS.name)
    proc = run([promtool, "test", "rules", ALERT_UNIT_TESTS.name], cwd=rules_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _duration(s: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", s))


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
    "namespace_service:kai_api_requests:rate5m",    # request rate
    "namespace_service:kai_api_error_ratio:rate5m", # 5xx share (availability SLI)
    "namespace_service_slo:kai_slow_request_ratio:rate5m",  # latency SLIs
    "namespace_service:kai_llm_failure_ratio:rate5m",       # LLM failures
    "histogram_quantile(0.50",                      # p50
    "histogram_quantile(0.95",                      # p95
    "histogram_quantile(0.99",                      # p99
    "kai_http_requests_duration_seconds_bucket",
    "sum by (cache_namespace) (rate(kai_cache_hits_total",  # hit rate per cache namespace
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


def read_metric_names() -> set[str]:
    """Every metric the dashboard and the rules read."""
    exprs = [e for _, e in dashboard_exprs()] + [r["expr"] for r in all_rules()]
    return {base_metric_name(m) for e in exprs for m in metric_names(e) if not is_recording_rule(m)}


def used_metric_names() -> list[str]:
    """The services' metrics the dashboard and the rules read that every
    service exports (not Prometheus' or kube-state-metrics', nor those only
    some services or setups export: contract.PARTIAL_METRICS)."""
    return sorted(read_metric_names() - EXTERNAL_METRICS - PARTIAL_METRICS)


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
    watched = read_metric_names()
    assert METRICS <= watched, f"contract metrics not on the dashboard or in alerts: {METRICS - watched}"


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
