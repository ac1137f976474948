"""The docs stay true to the code: generated pages match it, links lead somewhere, and the
README opens with the two commands."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from infra import docs

REPO = docs.REPO
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
# [text](target) and reference definitions "[name]: target"; images the same.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|^\[[^\]]+\]:\s*(\S+)", re.M)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def test_generated_pages_match_the_code():
    diff = docs.drift(docs.render())
    assert not diff, "run `make docs` and commit the pages:\n" + diff


def test_every_setting_has_help():
    # The configuration reference is only as good as each field's one line.
    from usersignals.settings import Settings

    missing = [f.name for f in dataclasses.fields(Settings) if not str(f.metadata.get("help", "")).strip()]
    assert missing == []


def test_a_setting_without_help_fails_the_render(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Settings:
        api_port: int = dataclasses.field(default=8000, metadata={"help": "Port the serving API listens on."})
        kv_port: int = 6379

    monkeypatch.setattr(docs.settings_module, "Settings", Settings)
    with pytest.raises(ValueError, match=r"without metadata\['help'\].*: kv_port;"):
        docs.render_configuration()


def test_metrics_page_lists_every_constructed_metric_once():
    page = docs.METRICS.read_text()
    found = docs.find_metrics()
    names = {m.name for m in found if m.name.startswith("usersignals_")}
    # Golden anchors from each exposing process: a finder that silently found nothing would fail here.
    assert {"usersignals_indexer_dlq_total", "usersignals_api_requests_total",
            "usersignals_trimmer_pass_seconds", "usersignals_batch_failed",
            "usersignals_model_promoted"} <= names
    for name in names:
        assert page.count(f"| `{name}` |") == 1, name
    dlq = next(m for m in found if m.name == "usersignals_indexer_dlq_total")
    assert (dlq.kind, dlq.labels) == ("counter", ("reason",))
    rows = next(m for m in found if m.name == "usersignals_batch_rows")  # labels given as a variable
    assert rows.labels == ("job", "stage")


def test_metric_finder_reads_labels_and_help(tmp_path):
    module = tmp_path / "serving" / "thing.py"
    module.parent.mkdir()
    module.write_text(
        "from prometheus_client import Counter, Histogram\n"
        "import collections\n"
        "LABELS = ['tenant', 'route']\n"
        "A = Counter('usersignals_thing_total', 'Things ' 'done.', LABELS)\n"
        "B = Histogram('usersignals_thing_seconds', documentation='How long.', labelnames=('tenant',))\n"
        "C = collections.Counter('not a metric')\n")
    found = docs.find_metrics(tmp_path)
    assert [(m.name, m.kind, m.labels, m.help) for m in found] == [
        ("usersignals_thing_total", "counter", ("tenant", "route"), "Things done."),
        ("usersignals_thing_seconds", "histogram", ("tenant",), "How long.")]
    with pytest.raises(ValueError, match="serving/thing.py.*EXPOSED_BY"):
        docs.render_metrics(tmp_path)


def test_benchmarks_page_has_a_row_per_recorded_run(tmp_path):
    (tmp_path / "freshness.jsonl").write_text(
        '{"run": {"date": "2026-12-02T01:14:40+00:00", "commit": "a85e592ee124", "dirty": true, "argv": ["--rate", "2000"],'
        ' "machine": {"cpus": 2, "cpu": "Xeon", "mem_gb": 23.5}}, "result": {"bench": "freshness", "rate": 1873,'
        ' "p50_ms": 73.1, "p99_ms": 347.5}}\n')
    page = docs.render_benchmarks(tmp_path)
    assert "| 2026-12-02 01:14 | `a85e592`+dirty | 2 × Xeon, 23.5 GB | --rate 2000 | 1,873 | 73.1 | – | 347.5 |" in page
    (tmp_path / "freshness.jsonl").write_text('{"bench": "freshness"}\n')   # a bare line, not a recorded run
    with pytest.raises(ValueError, match="freshness.jsonl:1"):
        docs.render_benchmarks(tmp_path)


def test_registry_page_names_every_key_the_validation_accepts():
    from usersignals.registry import TENANT_KEYS

    page = docs.REGISTRY.read_text()
    tenants = page.split("### `[tenants.<name>]`")[1].split("###")[0]
    assert sorted(re.findall(r"^\| `(\w+)` \|", tenants, re.M)) == sorted(TENANT_KEYS)
    assert "| `retention` | yes | – |" in page and "| `click` | 1 | 2 | 3 | yes | `clicks` |" in page
    # The per-type weights' defaults are documented, not a silent 0.
    assert "| `aggregate_weight` | no | `1.0` |" in page and "| `training_weight` | no | `1.0` |" in page
    assert "| `embedding_dim` | no | `16` |" in page


def _links(page: Path) -> list[str]:
    text = CODE.sub("", page.read_text())
    return [a or b for a, b in LINK.findall(text)]


def _anchors(page: Path) -> set[str]:
    """The anchors a Markdown renderer gives a page's headings (GitHub's rule: lowercase, drop
    punctuation but hyphens, spaces to hyphens)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue                      # http(s), mailto: not reachable offline
        path, _, anchor = target.partition("#")
        resolved = page.parent / path if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert broken == []


def test_docs_tree_is_linked_from_the_readme_or_an_index():
    linked = set()
    for page in PAGES:
        for target in _links(page):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target) and not target.startswith("#"):
                linked.add((page.parent / target.split("#", 1)[0]).resolve())
    orphans = [str(p.relative_to(REPO)) for p in PAGES[1:] if p.resolve() not in linked]
    assert orphans == []


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```[^\n]*\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert first_block, "README.md has no command block"
    commands = [line.split("#", 1)[0].strip() for line in first_block.group(1).splitlines()]
    assert "make run" in commands and "make test" in commands
