"""What the deploy/ files ask Prometheus for: every PromQL expression, and the metric names each one reads.

Metric names are found by a small tokenizer rather than a PromQL parser (none is on PyPI for Python that
follows Prometheus 2.x): strings, label matchers, label lists and range selectors are removed, then every
identifier that is not a function, an aggregation keyword or an operator is a metric name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "sluice.rules.yml"
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.test.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "sluice.json"
RUNBOOKS = ROOT / "docs" / "runbooks"
METRICS_DOC = ROOT / "docs" / "metrics.md"

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "inf", "nan", "Inf", "NaN",
}  # fmt: skip
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_OFFSETS = re.compile(r"\boffset\s+-?\d+[smhdwy]")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _OFFSETS.sub(" ", text)
    names = set()
    for name, call in _IDENTIFIER.findall(text):
        if call or name in _KEYWORDS:
            continue  # a function or aggregation call, or a keyword
        names.add(name)
    return names


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard_exprs() -> list[str]:
    """Every target's expression, with Grafana's variables replaced by what Prometheus accepts."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str) and node["expr"].strip():
                found.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    dashboard = msgspec.json.decode(DASHBOARD.read_bytes())
    walk(dashboard.get("panels", []))
    return [grafana_to_promql(expr) for expr in found]


def grafana_to_promql(expr: str) -> str:
    for variable, value in (("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h")):
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?(tenant|model|deployment|route)(?::\w+)?\}?", ".*", expr)


def runbook_promql(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```promql\n(.*?)```", text, re.DOTALL)]


def documented_metrics() -> set[str]:
    """The metric contract: every name in docs/metrics.md's tables, histograms expanded to their series."""
    names: set[str] = set()
    for row in re.findall(r"^\| `([a-z_:]+)` \| (\w+) \|", METRICS_DOC.read_text(), re.MULTILINE):
        name, kind = row
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names
