"""Every alert of monitoring/alerts.yml has a unit test in alerts_test.yml (promtool runs
them: tests/integration/test_monitoring_rules.py)."""

from __future__ import annotations

import yaml

from catdog_runtime.services import MONITORING_DIR as MONITORING


def test_every_alert_has_a_unit_test():
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    cases = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert alerts == fired
