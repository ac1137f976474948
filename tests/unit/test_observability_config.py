"""Alert rules and the Grafana dashboard: valid PromQL (promtool), only metrics the code exports."""
import json
import re
import shutil
import subprocess

import pytest
import yaml

from usersignals.settings import REPO_ROOT

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with Debian's prometheus (make install)")
RULES = REPO_ROOT / "infra" / "prometheus" / "alerts.yml"
DASHBOARD = REPO_ROOT / "infra" / "grafana" / "usersignals.json"
SOURCES = [*REPO_ROOT.glob("usersignals/*.py"), *REPO_ROOT.glob("streaming/*.py"), *REPO_ROOT.glob("serving/*.py"),
           *REPO_ROOT.glob("batch/*.py")]


# A metric is exported where the code constructs it: Counter("usersignals_…", …) and the like.
_CONSTRUCTED = re.compile(r'\b(?:Counter|Gauge|Histogram|Summary)\(\s*"(usersignals_[a-z0-9_]+)"')


def exported_metric_names(text: str | None = None) -> set[str]:
    if text is None:
        text = "\n".join(p.read_text() for p in SOURCES)
    return set(_CONSTRUCTED.findall(text))


def test_only_constructed_metrics_count_as_exported():
    text = '''X = Counter("usersignals_a_total", "help")
    y = Histogram(
        "usersignals_b_seconds", "help")
    log("usersignals_not_a_metric")  # a quoted name is not an exported metric'''
    assert exported_metric_names(text) == {"usersignals_a_total", "usersignals_b_seconds"}
    assert "usersignals_api_requests_total" in exported_metric_names()


def referenced(expr: str) -> set[str]:
    names = set()
    for name in re.findall(r"usersignals_[a-z0-9_]+", expr):
        names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def test_alert_rules_pass_promtool_and_cover_the_promised_signals():
    out = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    for needed in ("UsersignalsIndexerLagging", "UsersignalsFreshnessP99High", "UsersignalsDlqRateHigh",
                   "UsersignalsKvErrors", "UsersignalsServingP99High", "UsersignalsBatchJobFailed"):
        assert needed in alerts
    known = exported_metric_names()
    for name, rule in alerts.items():
        assert referenced(rule["expr"]) <= known, (name, referenced(rule["expr"]) - known)
        assert rule["annotations"]["summary"] and rule["labels"]["severity"] in ("page", "ticket")


def test_dashboard_queries_are_valid_promql_on_exported_metrics(tmp_path):
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    known = exported_metric_names()
    for e in exprs:
        assert referenced(e) <= known, (e, referenced(e) - known)
    # promtool validates PromQL inside rule files: wrap each query as a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e}
                                                        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
