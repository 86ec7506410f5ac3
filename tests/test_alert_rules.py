"""The README's Prometheus alert rules (Monitoring): valid YAML, one alert for each failure
`gateway status` reports, each on a metric the gateway exports; with promtool (Debian's
prometheus package, installed by scripts/test), valid rules and, in promtool's own rule
tests, each alert firing on the series that mean its failure and staying quiet on
healthy ones."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def rules_text() -> str:
    block = README.split("<!-- alert-rules -->", 1)[1].split("<!-- /alert-rules -->", 1)[0]
    return block.strip().removeprefix("```yaml").removesuffix("```").strip() + "\n"


def alerts() -> dict[str, dict]:
    groups = yaml.safe_load(rules_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_one_alert_for_each_failure_on_metrics_the_gateway_exports():
    found = alerts()
    # Issue 16's silent failures: the service not running, the relay refusing, mail
    # quarantined, a mailbox's poll failing; and the rest of what status reports.
    assert {"GatewayDown", "GatewayProcessDown", "GatewayRelayRefusing", "GatewayMailQuarantined",
            "GatewayMailboxPollFailing", "GatewayProcessingStuck", "GatewayNotificationsOverdue",
            "GatewayDatabaseDown"} == set(found)
    documented = set(re.findall(r"^\| `(gateway_[a-z_]+)", README, re.MULTILINE))
    for name, rule in found.items():
        used = set(re.findall(r"gateway_[a-z_]+", rule["expr"]))
        assert used <= documented, (name, used - documented)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (CI is set: scripts/test installs Debian's prometheus package)")
        pytest.skip("promtool is missing (Debian's prometheus package)")
    return path


# Series that make each alert fire (values every minute), and the labels it then carries.
FIRING = {
    "GatewayDown": ('up{job="helpdesk-gateway", instance="gw:8025"}', "0x20", {"job": "helpdesk-gateway",
                                                                             "instance": "gw:8025"}),
    "GatewayProcessDown": ('gateway_process_up{role="worker-0", instance="gw:8025"}', "0x20",
                           {"role": "worker-0", "instance": "gw:8025"}),
    "GatewayRelayRefusing": ('gateway_relay_failed_attempts{instance="gw:8025"}', "3x20", {"instance": "gw:8025"}),
    "GatewayMailQuarantined": ('gateway_quarantined_last_day{instance="gw:8025"}', "1x20", {"instance": "gw:8025"}),
    "GatewayMailboxPollFailing": ('gateway_mailbox_poll_failing{mailbox="desk", instance="gw:8025"}', "1x20",
                                  {"mailbox": "desk", "instance": "gw:8025"}),
    "GatewayProcessingStuck": ('gateway_queue_oldest_seconds{queue="inbound", instance="gw:8025"}', "900x20",
                               {"queue": "inbound", "instance": "gw:8025"}),
    "GatewayNotificationsOverdue": ('gateway_outbox_oldest_due_seconds{instance="gw:8025"}', "900x20",
                                    {"instance": "gw:8025"}),
    "GatewayDatabaseDown": ('gateway_database_up{instance="gw:8025"}', "0x20", {"instance": "gw:8025"}),
}
# The same series when all is well: no alert.
HEALTHY = {
    "GatewayDown": "1x20", "GatewayProcessDown": "1x20", "GatewayRelayRefusing": "0x20",
    "GatewayMailQuarantined": "0x20", "GatewayMailboxPollFailing": "0x20", "GatewayProcessingStuck": "2x20",
    "GatewayNotificationsOverdue": "0x20", "GatewayDatabaseDown": "1x20",
}


def test_promtool_finds_the_rules_valid_and_each_alert_fires_on_its_failure_only(tmp_path):
    tool = promtool()
    rules = tmp_path / "gateway-rules.yml"
    rules.write_text(rules_text())
    checked = subprocess.run([tool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The rule tests compare labels; the annotations (templates of $value) are checked
    # by `check rules` above and left out here.
    quiet = yaml.safe_load(rules_text())
    for group in quiet["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "quiet-rules.yml").write_text(yaml.safe_dump(quiet))
    tests = []
    for name, (series, values, labels) in FIRING.items():
        tests.append({"interval": "1m", "input_series": [{"series": series, "values": values}],
                      "alert_rule_test": [{"eval_time": "15m", "alertname": name,
                                           "exp_alerts": [{"exp_labels": labels}]}]})
        tests.append({"interval": "1m", "input_series": [{"series": series, "values": HEALTHY[name]}],
                      "alert_rule_test": [{"eval_time": "15m", "alertname": name, "exp_alerts": []}]})
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["quiet-rules.yml"], "tests": tests}))
    run = subprocess.run([tool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
