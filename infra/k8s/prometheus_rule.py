"""Write infra/k8s/prometheus-rule.yaml: the Prometheus Operator's PrometheusRule with the groups of
infra/prometheus/alerts.yml as they are, so the cluster alerts on exactly what the local stack does.

    .venv/bin/python -m infra.k8s.prometheus_rule

tests/unit/test_k8s_monitoring.py fails when the file is not what this writes from alerts.yml.
"""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "infra" / "prometheus" / "alerts.yml"
RULE = ROOT / "infra" / "k8s" / "prometheus-rule.yaml"
HEADER = ("# Generated from infra/prometheus/alerts.yml by infra/k8s/prometheus_rule.py: edit alerts.yml and\n"
          "# run `.venv/bin/python -m infra.k8s.prometheus_rule` (tests/unit/test_k8s_monitoring.py checks).\n")


def render(alerts_text: str) -> str:
    groups = yaml.safe_load(alerts_text)["groups"]
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "usersignals", "namespace": "usersignals"},
            "spec": {"groups": groups}}
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=200, allow_unicode=True)


def main() -> None:
    RULE.write_text(render(ALERTS.read_text()))
    print(f"wrote {RULE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
