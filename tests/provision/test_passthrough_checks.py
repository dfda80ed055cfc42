"""Settings a cluster file passes verbatim into coreos.etcd2 / coreos.fleet are checked as
coreos-cloudinit will check the rendered user-data, at the cluster file's positions."""

from __future__ import annotations

import pytest

from provision.userdata import validate_user_data
from provision.userdata.sections import check_section

CLUSTER = """\
name: demo
nodes:
  count: 2
  overrides:
    core-02:
      fleet:
        verbosity: 2
        etcd-request-timeout: 1.5
        agent-tll: 5s
etcd:
  members: [core-01]
  settings:
    heartbeat-interval: 100
    auto-compaction-retention: 1
    snapshot_count: "5000"
"""


def test_unknown_and_mistyped_settings_warn_at_their_position(cluster_file, run_cli, tmp_path):
    path = cluster_file(CLUSTER)
    result = run_cli("validate", str(path))
    assert result.code == 0, result.err
    warnings = result.err.splitlines()
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith(f"{path}:9:9: warning: `nodes.overrides.core-02.fleet`: "
                                  '"agent-tll" is not a key of CoreOS\'s fleet section')
    assert "set FLEET_AGENT_TLL in a drop-in for fleet.service" in warnings[0]
    assert warnings[1].startswith(f"{path}:14:5: warning: `etcd.settings`: "
                                  '"auto-compaction-retention" is not a key of CoreOS\'s etcd2')
    assert "unrecognized key" in warnings[1] and "ETCD_AUTO_COMPACTION_RETENTION" in warnings[1]
    assert warnings[2].startswith(f"{path}:15:5: warning: `etcd.settings`: incorrect type for "
                                  '"snapshot-count" (want int)')
    assert "valid: 2 nodes" in result.out

    # render says the same, and writes a user-data that validates with the same warnings
    out = tmp_path / "out"
    rendered = run_cli("render", str(path), "-o", str(out))
    assert rendered.code == 0
    assert rendered.err.splitlines() == warnings
    user_data = (out / "user-data-2").read_text()
    problems = validate_user_data(user_data, "user-data-2")
    assert sorted(p.message.split(" (")[0] for p in problems) == [
        'incorrect type for "snapshot-count"', 'unrecognized key "agent-tll"',
        'unrecognized key "auto-compaction-retention"']
    assert {p.severity for p in problems} == {"warning"}


def test_strict_makes_the_warnings_fail(cluster_file, run_cli):
    path = cluster_file(CLUSTER)
    assert run_cli("validate", "--strict", str(path)).code == 2


def test_errors_come_with_the_warnings(cluster_file, run_cli):
    path = cluster_file(CLUSTER + "    proxy: maybe\n")
    result = run_cli("validate", str(path))
    assert result.code == 2
    lines = result.err.splitlines()
    assert any(line.startswith(f"{path}:16:12: `etcd.settings`: invalid value maybe") for line
               in lines), lines
    assert sum("warning:" in line for line in lines) == 3


@pytest.mark.parametrize("section, key, value, expected", [
    ("etcd2", "heartbeat-interval", 100, []),
    ("etcd2", "proxy", "on", []),
    ("etcd2", "proxy", True, [("error", False, "invalid value true")]),
    ("etcd2", "wal-dir", "/var/lib/wal", []),
    ("etcd2", "auto-compaction-retention", 1, [("warning", True, "unrecognized key")]),
    ("etcd2", "debug", "yes", [("warning", True, "incorrect type")]),
    ("etcd2", "ca-file", "/ca.pem", [("warning", True, "deprecated key")]),
    ("fleet", "engine-reconcile-interval", 0.5, []),
    ("fleet", "token-limit", 100, []),
    ("fleet", "verbosity", "2", [("warning", True, "incorrect type")]),
], ids=lambda v: repr(v))
def test_check_section(section, key, value, expected):
    findings = check_section(section, {key: (value, key + "-as-written")})
    assert [(f.severity, f.at_key) for f in findings] == [e[:2] for e in expected]
    for finding, (_, _, gist) in zip(findings, expected, strict=True):
        assert gist in finding.message
        assert finding.key == key + "-as-written"
