"""Prometheus metrics of the serving API (one registry per app instance)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_SIZES = (256, 1024, 4096, 16384, 65536, 262144, 1048576)


class ServingMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("usersignals_api_requests_total", "API requests by route and status.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("usersignals_api_request_seconds", "API request latency by route.",
                                 ["route"], buckets=_LATENCY, registry=r)
        self.tenant_requests = Counter("usersignals_api_tenant_requests_total",
                                       "Feature requests by tenant and outcome.", ["tenant", "outcome"], registry=r)
        self.tenant_latency = Histogram("usersignals_api_tenant_request_seconds",
                                        "Feature request latency by tenant.", ["tenant"], buckets=_LATENCY,
                                        registry=r)
        self.stage_latency = Histogram("usersignals_api_stage_seconds", "Serving stage latency by tenant.",
                                       ["tenant", "stage"], buckets=_LATENCY, registry=r)
        self.kv_latency = Histogram("usersignals_api_kv_read_seconds", "KV read latency (one round trip a user).",
                                    buckets=_LATENCY, registry=r)
        self.kv_errors = Counter("usersignals_api_kv_errors_total", "KV operations that failed.", registry=r)
        self.response_bytes = Histogram("usersignals_api_response_bytes", "Response size by tenant and format.",
                                        ["tenant", "format"], buckets=_SIZES, registry=r)
        self.events_served = Counter("usersignals_api_events_served_total", "Events served, by tenant.",
                                     ["tenant"], registry=r)
        self.missing_features = Counter("usersignals_api_items_without_features_total",
                                        "Served events whose item had no serving-time features.", ["tenant"],
                                        registry=r)
        self.in_flight = Gauge("usersignals_api_tenant_in_flight", "Feature requests in flight by tenant.",
                               ["tenant"], registry=r)
        self.feature_log = Counter("usersignals_api_feature_log_records_total",
                                   "Served-feature log records, by outcome.", ["outcome"], registry=r)
        self.tenant_config_version = Gauge("usersignals_api_tenant_config_version",
                                           "Config version each tenant is served with.", ["tenant"], registry=r)
