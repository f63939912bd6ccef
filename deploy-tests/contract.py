"""The deployment contract (SPEC §2, §4, §5, §8) in one place.

Everything the tests assert about names, ports and metrics comes from here,
so a contract change is a one-line change.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s"
DOCKER = REPO / "docker"
TESTS = Path(__file__).resolve().parent

# service short name -> (binary / cargo package, port)
SERVICES: dict[str, tuple[str, int]] = {
    "journal": ("journal-service", 8081),
    "conversation": ("conversation-service", 8082),
    "profile": ("profile-service", 8083),
}
BINARIES = {binary: port for binary, port in SERVICES.values()}

# SPEC §2: the complete set of environment variables a service reads.
LLM_ENV = {"LLM_BASE_URL", "LLM_API_KEY", "LLM_MODEL", "LLM_TIMEOUT_MS"}
SERVICE_ENV = {
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_CLUSTER_NODES",
    "DATABASE_CA_FILE",
    "DATABASE_REPLICA_URLS",
    "REDIS_CA_FILE",
    "HOST",
    "PORT",
    "AUTH_VERIFYING_KEYS_FILE",
    "AUTH_SIGNING_KEY_FILE",
    "TRUSTED_PROXIES",
    "AUTH_TOKEN_TTL_SECS",
    "CACHE_ENABLED",
    "DB_POOL_SIZE",
    "DB_POOL_TIMEOUT_SECS",
    "REDIS_POOL_SIZE",
    "REDIS_TIMEOUT_MS",
    "SLOW_QUERY_THRESHOLD_MS",
    "SLOW_REQUEST_THRESHOLD_MS",
    "CORS_ALLOWED_ORIGINS",
    "RUST_LOG",
    "LOG_FORMAT",
    "RUN_MIGRATIONS",
    "ACCESS_LOG_SAMPLE",
    "CACHE_L1_MAX_MB",
    "CACHE_ENCRYPTION_KEY",
    "CACHE_ENCRYPTION_KEYS",
    "REQUEST_BODY_TIMEOUT_MS",
} | LLM_ENV
REQUIRED_ENV = {"DATABASE_URL", "AUTH_VERIFYING_KEYS_FILE"}
# The signing key is a file (AUTH_SIGNING_KEY_FILE names its path), mounted from
# a Secret into profile-service only.
SECRET_ENV = {
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_CLUSTER_NODES",
    "LLM_API_KEY",
    "CACHE_ENCRYPTION_KEY",
    "CACHE_ENCRYPTION_KEYS",
}
# Credentials the prod overlay composes DATABASE_URL / REDIS_URL from
# (`$(DATABASE_USER)` substitution in the pod spec, k8s/overlays/prod/tls/):
# always from a Secret (valueFrom), never read by the services themselves.
CREDENTIAL_PARTS_ENV = {"DATABASE_USER", "DATABASE_PASSWORD", "REDIS_USER", "REDIS_PASSWORD"}

# SPEC §4 health routes.
LIVENESS_PATH = "/health"
READINESS_PATH = "/health/ready"
METRICS_PATH = "/metrics"

# Ingress: path prefix -> service binary.
INGRESS_ROUTES = {
    "/api/auth": "profile-service",
    "/api/profile": "profile-service",
    "/api/account": "profile-service",
    "/api/journal": "journal-service",
    "/api/conversations": "conversation-service",
}
# Must never be reachable through the ingress.
INTERNAL_PATHS = ("/metrics", "/health", "/health/ready", "/health/detailed", "/docs", "/openapi.json")

# SPEC §5 (plus kai_redis_up; kai_account_purges_total is SPEC §4 "Erasure"; the
# pools' maximums, the subscription, event-failure and erasure-backlog metrics
# are issue 32's). Histograms are exposed as _bucket/_sum/_count.
COUNTERS = {
    "kai_http_requests_total",
    "kai_cache_hits_total",
    "kai_cache_misses_total",
    "kai_cache_errors_total",
    "kai_db_slow_queries_total",
    "kai_llm_requests_total",
    "kai_account_purges_total",
    "kai_cache_subscriptions_total",
    "kai_events_failures_total",
    "kai_events_rejected_total",
    "kai_db_reads_total",
}
GAUGES = {
    "kai_db_pool_connections",
    "kai_db_pool_max_connections",
    "kai_redis_up",
    "kai_redis_pool_connections",
    "kai_redis_pool_max_connections",
    "kai_erasure_backlog",
    "kai_erasure_oldest_pending_seconds",
    "kai_db_replica_lag_seconds",
    "kai_db_replica_up",
}
HISTOGRAMS = {"kai_http_requests_duration_seconds", "kai_db_query_duration_seconds"}
METRICS = COUNTERS | GAUGES | HISTOGRAMS
# Read by the rules, exported by others: Prometheus itself (`up`) and
# kube-state-metrics (part of kube-prometheus-stack; absent under compose).
EXTERNAL_METRICS = {"up", "kube_deployment_status_replicas_available"}
# Exported by some services or setups only: the erasure backlog by profile,
# the Redis pool's by a service on one Redis node (a cluster connection has no
# pool), event failures where a stream consumer runs (Redis configured). Left
# out of metric_names.txt, whose every name the Rust end-to-end suite expects
# on each service's /metrics; scripts/check-observability accepts their absence.
PARTIAL_METRICS = {
    "kai_erasure_backlog",
    "kai_erasure_oldest_pending_seconds",
    "kai_redis_pool_connections",
    "kai_redis_pool_max_connections",
    "kai_events_failures_total",
    # Only with read replicas configured (DATABASE_REPLICA_URLS).
    "kai_db_replica_lag_seconds",
    "kai_db_replica_up",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# CRDs of the Prometheus operator: no schema in kubernetes-validate, checked
# by hand instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "PodMonitor"}

OVERLAYS = ("dev", "prod")
# Overlays that opt into the Prometheus-operator component (k8s/components/monitoring).
MONITORED_OVERLAYS = ("prod",)
MONITORING_COMPONENT = K8S / "components" / "monitoring"


def base_metric_name(name: str) -> str:
    """Map an exposed series name to its contract metric name.

    kai_http_requests_duration_seconds_bucket -> kai_http_requests_duration_seconds;
    anything that is not a known metric is returned unchanged.
    """
    if name in METRICS:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name
