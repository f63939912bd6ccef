"""Writes docker/prometheus/rules/kai-rules.yml: the `spec` of the PrometheusRule
in k8s/components/monitoring, as a plain Prometheus rules file for the compose
stack (whose dashboard reads the same recording rules).

    python3 deploy-tests/write_compose_rules.py

test_monitoring.py::test_compose_rules_equal_the_prometheusrule fails when the
file is out of date; it never rewrites it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
TARGET = HERE.parent / "docker" / "prometheus" / "rules" / "kai-rules.yml"
HEADER = (
    "# GENERATED from k8s/components/monitoring/prometheusrule.yaml (its spec) by\n"
    "# deploy-tests/write_compose_rules.py; edit the PrometheusRule, then rerun it.\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as `|` blocks, as in the PrometheusRule."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def content() -> str:
    spec = yaml.safe_load(SOURCE.read_text())["spec"]
    return HEADER + yaml.dump(spec, Dumper=_Dumper, sort_keys=False, width=1000)


if __name__ == "__main__":
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(content())
    print(f"wrote {TARGET}", file=sys.stderr)
