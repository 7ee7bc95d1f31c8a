"""The platform's alert rules: valid for `promtool check rules`, passing their `promtool test rules`
unit tests, each labelled with one of the guide's severities; the Prometheus and Alertmanager
configurations the lab writes are valid; and Alertmanager's routing sends each severity where it
belongs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from opslab.lab import build, monitoring, pki
from opslab.lab.spec import LabSpec, Paths

RULE_TESTS = Path(__file__).parent / "rules" / "platform.rules.test.yaml"
SEVERITIES = {"P0", "P1", "P2", "P3"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return str(build.installed() / "promtool")


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


def alerting_rules() -> list[dict]:
    return [rule for path in monitoring.RULES.glob("*.yaml") for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check(promtool):
    result = run(promtool, "check", "rules", *map(str, monitoring.RULES.glob("*.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_unit_tests(promtool):
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_severity_of_the_guide_and_says_what_to_do():
    rules = alerting_rules()
    assert {rule["alert"] for rule in rules} >= {
        "HighErrorRate", "HighLatency", "PodRestartingOften", "PodCrashLooping", "DatabaseDown",
        "CertificateExpiringSoon", "BackupTooOld", "MemoryGrowth"}
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_is_unit_tested():
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in alerting_rules()}


@pytest.mark.parametrize("labels, receiver", [
    ("severity=P0", "page-oncall"), ("severity=P1", "page-oncall"), ("severity=P2", "ticket-platform-team"),
    ("severity=P3", "digest-platform-team"), ("alertname=Unlabelled", "digest-platform-team")])
def test_alertmanager_routes_each_severity(labels, receiver, tmp_path):
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(monitoring.alertmanager_config(LabSpec.default())))
    result = run("amtool", "config", "routes", "test", f"--config.file={config}", labels)
    assert result.stdout.strip() == receiver, result.stdout + result.stderr


def test_the_lab_writes_valid_prometheus_and_alertmanager_configurations(promtool, tmp_path):
    spec = LabSpec(paths=Paths(tmp_path / "home"))
    pki.ensure(spec)  # promtool checks that the client certificates it names exist
    prometheus, alertmanager = tmp_path / "prometheus.yml", tmp_path / "alertmanager.yml"
    prometheus.write_text(yaml.safe_dump(monitoring.prometheus_config(spec)))
    alertmanager.write_text(yaml.safe_dump(monitoring.alertmanager_config(spec)))
    checked = run(promtool, "check", "config", str(prometheus))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = run("amtool", "check-config", str(alertmanager))
    assert checked.returncode == 0, checked.stdout + checked.stderr
