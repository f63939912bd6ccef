"""Just enough PromQL lexing to list the metric names an expression selects.

Not a parser: it removes string literals, `#` comments, label matchers, range/subquery
brackets and grouping clauses, then every remaining identifier that is not
followed by "(" (a function or aggregation) and is not a keyword is a metric
name. Syntax itself is checked by promtool (see test_monitoring.py).
"""

from __future__ import annotations

import re

_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2", "start", "end",
}
_COMMENT = re.compile(r"#[^\n]*")
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)")
_DURATION_AFTER_OFFSET = re.compile(r"\boffset\s+-?\w+")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# Grafana template variables ($service, ${service}, $__rate_interval).
_GRAFANA_VAR = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(?::\w+)?\}?")


def substitute_grafana_variables(expr: str) -> str:
    """Replace Grafana variables with values promtool accepts."""
    expr = expr.replace("$__rate_interval", "5m").replace("${__rate_interval}", "5m")
    expr = expr.replace("$__interval", "1m").replace("${__interval}", "1m")
    return _GRAFANA_VAR.sub(".*", expr)


def metric_names(expr: str) -> set[str]:
    s = _STRING.sub('""', expr)
    s = _COMMENT.sub(" ", s)
    s = _MATCHERS.sub(" ", s)
    s = _BRACKETS.sub(" ", s)
    s = _DURATION_AFTER_OFFSET.sub(" ", s)
    s = _GROUPING.sub(" ", s)
    s = _GRAFANA_VAR.sub(" ", s)
    s = _NUMBER.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        word = m.group(0)
        rest = s[m.end():].lstrip()
        if rest.startswith("("):
            continue  # function or aggregation operator
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names
