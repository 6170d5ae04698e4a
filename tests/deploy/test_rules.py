"""deploy/prometheus: rules and alerts pass promtool, every alert has a unit test and a runbook, and every
expression in the rules, the dashboard and the runbooks reads only metrics the gateway exports."""

from __future__ import annotations

import re
import subprocess

import httpx
import yaml

from tests.deploy.promql import (
    ROOT,
    RULE_TESTS,
    RULES,
    RUNBOOKS,
    alerts,
    dashboard_exprs,
    documented_metrics,
    metric_names,
    recorded_names,
    rules,
    runbook_promql,
)
from tests.deploy.tools import binary
from tests.harness import Gateway

_RUNBOOK_SECTIONS = ("## Symptoms", "## Queries", "## First three actions", "## Roll back", "## Alert")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], check=False, capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_promtool_checks_and_unit_tests_pass() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_fires_in_a_unit_test_and_links_a_runbook_that_exists() -> None:
    fired: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            fired |= {check["alertname"] for check in case.get("alert_rule_test", []) if check.get("exp_alerts")}
    for alert in alerts():
        name = alert["alert"]
        assert name in fired, f"{name} has no unit test in which it fires"
        url = alert["annotations"]["runbook_url"]
        runbook = RUNBOOKS / url.rsplit("/", 1)[1]
        assert url.endswith(f"/docs/runbooks/{runbook.name}") and runbook.is_file(), url
        assert name in runbook.read_text(), f"{runbook.name} does not name {name}"
        assert alert["labels"]["severity"] in ("page", "ticket", "warning")


def test_every_runbook_has_the_playbook_sections_and_the_index_lists_it() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    runbooks = sorted(path for path in RUNBOOKS.glob("*.md") if path.name != "README.md")
    failure_modes = (
        "upstream-timeouts", "cascading-failure", "quota-storm", "budget-exhaustion", "redis-down",
        "postgres-down", "cache-poisoning", "routing-regression",
    )  # fmt: skip
    assert {f"{mode}.md" for mode in failure_modes} <= {path.name for path in runbooks}
    for path in runbooks:
        text = path.read_text()
        for section in _RUNBOOK_SECTIONS:
            assert section in text, f"{path.name} lacks {section}"
        actions = text.split("## First three actions", 1)[1].split("\n## ", 1)[0]
        assert len(re.findall(r"^\d+\. ", actions, re.MULTILINE)) == 3, path.name
        assert path.name in index, f"docs/runbooks/README.md does not list {path.name}"


def test_every_expression_reads_only_exported_metrics_or_recording_rules() -> None:
    known = documented_metrics() | recorded_names()
    sources: list[tuple[str, str]] = [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in rules()]
    sources += [("dashboard", expr) for expr in dashboard_exprs()]
    for path in RUNBOOKS.glob("*.md"):
        sources += [(path.name, expr) for expr in runbook_promql(path.read_text())]
    assert len(sources) > 80
    for where, expr in sources:
        names = metric_names(expr)
        assert names, f"{where}: reads no metric: {expr}"
        assert names <= known, f"{where}: unknown metrics {names - known} in {expr}"


def test_the_name_extractor_sees_through_functions_labels_and_ranges() -> None:
    expr = (
        'sum by (tenant) (rate(sluice_requests_total{outcome=~"upstream_.*", model="a"}[5m] offset 1h))'
        " / ignoring (outcome) group_left sluice:requests:rate5m > 2 * scalar(days_in_month()) and bogus_metric"
    )
    assert metric_names(expr) == {"sluice_requests_total", "sluice:requests:rate5m", "bogus_metric"}


async def test_promtool_accepts_a_scrape_and_the_scrape_matches_the_metric_contract(gateway: Gateway) -> None:
    _, key = await gateway.tenant_key(rpm=1000, budget_usd="5", budget_period="day")
    async with httpx.AsyncClient(base_url=gateway.base, headers={"authorization": f"Bearer {key}"}) as client:
        for model in ("fake-ok", "fake-500", "fake-429"):
            body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
            await client.post("/v1/chat/completions", json=body)
        await client.post("/v1/chat/completions", json={"model": "fake-ok", "messages": []})
        scrape = (await client.get("/metrics")).text
    checked = subprocess.run(
        [binary("promtool"), "check", "metrics"], input=scrape, check=False, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    exported = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\w+)$", scrape, re.MULTILINE):
        if kind == "histogram":
            exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:  # counters are typed under their `_total` name
            exported.add(name)
    assert exported == documented_metrics()
