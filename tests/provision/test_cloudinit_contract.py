"""`provision validate --user-data` against coreos-cloudinit v1.13.0, row by row.

Each row is a small user-data file with the report coreos-cloudinit's
validator (config/validate: validate.go, rules.go, report.go) gives for it:
(level, line, gist of the message). Most come from its own tests
(rules_test.go, validate_test.go, config_test.go), given a `#cloud-config`
header (so their lines are one lower) and, where a row is not about it, a
`path` or `name` so our stricter checks stay quiet. Where we say more than
coreos-cloudinit, the row lists it under `ours`; where the line differs, the
entry carries ours as a fourth element.

Exit statuses: coreos-cloudinit -validate exits 1 for any entry; provision
exits 2 when there is an error (with --strict: any entry) and 0 otherwise.
"""

from __future__ import annotations

import pytest

from provision.cli.root import main
from provision.userdata import validate_user_data

H = "#cloud-config\n"
E, W, I = "error", "warning", "info"  # noqa: E741 - report.go's three levels


def row(id: str, text: str, cloudinit: list[tuple], ours: list[tuple] | None = None):
    return pytest.param(text, cloudinit, ours or [], id=id)


ROWS = [
    # validate.go: what is validated at all
    row("empty-file", "", [], [(E, 1, "the file is empty")]),
    row("script", "#!/bin/sh\necho hi\n", [], [(E, 1, "run it as a script")]),
    row("ignition", '{"ignition": {"version": "2.0.0"}}\n', [], [(E, 1, "an Ignition config")]),
    row("no-header", "hostname: a\n", [(E, 1, 'must be "#cloud-config" or begin with "#!"')]),
    row("bom-before-header", "\ufeff#cloud-config\n",
        [(E, 1, 'must be "#cloud-config" or begin with "#!"')]),
    row("header-trailing-space", "#cloud-config \t\nhostname: a\n", []),
    row("header-crlf", "#cloud-config\r\nhostname: a\r\n", []),
    row("header-only", "#cloud-config", []),
    # validate_test.go: YAML errors (coreos-cloudinit prints libyaml's 0-based mark line)
    row("yaml-tab", H + "\t", [(E, 1, "found character that cannot start any token", 2)]),
    row("yaml-missing-colon", H + "a:\na", [(E, 3, "could not find expected ':'", 4)]),
    # rules_test.go: checkStructure
    row("unknown-top-level-key", H + "test:", [(W, 2, 'unrecognized key "test"')]),
    row("unknown-etcd-key", H + "coreos:\n  etcd:\n    bad:",
        [(W, 4, 'unrecognized key "bad"')], [(W, 3, "configures etcd v0.4")]),
    row("etcd2-option-under-etcd", H + "coreos:\n  etcd:\n    proxy: hi",
        [(W, 4, 'deprecated key "proxy" (etcd2 options no longer work for etcd)')],
        [(W, 3, "configures etcd v0.4")]),
    row("units-not-mappings", H + "coreos:\n  units:\n    - hello\n    - goodbye",
        [(W, 4, 'incorrect type for "units[0]"'), (W, 5, 'incorrect type for "units[1]"')]),
    row("unit-enable-int", H + "coreos:\n  units:\n    - name: a.service\n      enable: 4",
        [(W, 5, 'incorrect type for "enable" (want bool)')]),
    row("unit-enable-word", H + "coreos:\n  units:\n    - name: a.service\n      enable: bad",
        [(W, 5, 'incorrect type for "enable" (want bool)')]),
    row("unit-enable-y-is-a-bool", H + "coreos:\n  units:\n    - name: a.service\n      enable: y",
        []),
    row("hostname-true-and-int-are-strings", H + "hostname: true\nusers:\n  - name: 4\n", []),
    row("hostname-mapping", H + "hostname:\n  name:", [(W, 2, 'incorrect type for "hostname"')]),
    row("coreos-scalar", H + "coreos: hello", [(W, 2, 'incorrect type for "coreos"')]),
    row("ssh-keys-scalar", H + "ssh_authorized_keys: key",
        [(W, 2, 'incorrect type for "ssh_authorized_keys"')]),
    row("ssh-key-item-mapping", H + "ssh_authorized_keys:\n  - key: value",
        [(W, 3, 'incorrect type for "ssh_authorized_keys[0]"')]),
    row("users-item-bool", H + "users:\n  - name: hi\n  - true",
        [(W, 4, 'incorrect type for "users[1]"')]),
    row("etcd2-unknown-passthrough", H + "coreos:\n  etcd2:\n    auto-compaction-retention: 1",
        [(W, 4, 'unrecognized key "auto-compaction-retention"')]),
    row("float-field-takes-int-not-string",
        H + "coreos:\n  fleet:\n    engine_reconcile_interval: 2\n    etcd_request_timeout: '1'",
        [(W, 5, 'incorrect type for "etcd_request_timeout" (want number)')]),
    row("int-field-refuses-float", H + "coreos:\n  etcd2:\n    heartbeat_interval: 1.5",
        [(W, 4, 'incorrect type for "heartbeat_interval" (want int)')]),
    row("deprecated-etcd2-ca-file", H + "coreos:\n  etcd2:\n    ca-file: /etc/ca.pem",
        [(W, 4, 'deprecated key "ca-file" (ca_file obsoleted by trusted_ca_file')]),
    row("deprecated-github-import", H + "users:\n  - name: core\n    coreos_ssh_import_github: x",
        [(W, 4, 'deprecated key "coreos_ssh_import_github"')]),
    # rules_test.go: checkValidity (errors since v1.13.0's rules.go)
    row("unit-command-invalid", H + "coreos:\n  units:\n    - name: a.service\n      command: lol",
        [(E, 5, "invalid value lol")]),
    row("reboot-strategy-unquoted-off", H + "coreos:\n  update:\n    reboot_strategy: off", []),
    row("reboot-strategy-always", H + "coreos:\n  update:\n    reboot_strategy: always",
        [(E, 4, "invalid value always")]),
    row("reboot-strategy-false", H + "coreos:\n  update:\n    reboot-strategy: false",
        [(E, 4, "invalid value false")]),
    row("proxy-unquoted-on", H + "coreos:\n  etcd2:\n    proxy: on", []),
    row("locksmith-window-25h", H + "coreos:\n  locksmith:\n    window_start: '25:00'",
        [(E, 4, "invalid value 25:00")]),
    row("locksmith-window-good", H + "coreos:\n  locksmith:\n    window_start: Thu 04:00\n"
                                     "    window_length: 1h30m", []),
    row("locksmith-length-words", H + "coreos:\n  locksmith:\n    window_length: 1 hour",
        [(E, 4, "invalid value 1 hour")]),
    row("permissions-unquoted-octal", H + "write_files:\n  - path: /etc/a\n    permissions: 0644",
        []),
    row("permissions-not-octal", H + "write_files:\n  - path: /etc/a\n    permissions: 0999",
        [(E, 4, "invalid value 0999")]),
    # rules_test.go: checkEncoding
    row("base64-ok", H + "write_files:\n  - path: /etc/a\n    encoding: base64\n"
                         "    content: aGVsbG8K", []),
    row("binary-without-encoding", H + "write_files:\n  - path: /etc/a\n"
                                       "    content: !!binary aGVsbG8K", []),
    row("base64-of-binary", H + "write_files:\n  - path: /etc/a\n    encoding: base64\n"
                                "    content: !!binary aGVsbG8K",
        [(E, 5, 'content cannot be decoded as "base64"')]),
    row("base64-of-binary-base64", H + "write_files:\n  - path: /etc/a\n    encoding: base64\n"
                                       "    content: !!binary YUdWc2JHOEsK", []),
    row("gzip-binary", H + "write_files:\n  - path: /etc/a\n    encoding: gzip\n"
                           "    content: !!binary H4sIAOC3tVQAA8tIzcnJ5wIAIDA6NgYAAAA=", []),
    row("gzip-base64", H + "write_files:\n  - path: /etc/a\n    encoding: gzip+base64\n"
                           "    content: H4sIAOC3tVQAA8tIzcnJ5wIAIDA6NgYAAAA=", []),
    row("encoding-unknown", H + "write_files:\n  - path: /etc/a\n    encoding: custom\n"
                                "    content: hello",
        [(E, 4, "invalid value custom"), (E, 5, 'content cannot be decoded as "custom"')]),
    row("gzip-base64-truncated-header", H + "write_files:\n  - path: /etc/a\n"
                                            "    encoding: gz+b64\n    content: H4sIAAAAAAAA",
        [(E, 5, 'content cannot be decoded as "gz+b64"')]),
    row("base64-without-padding", H + "write_files:\n  - path: /etc/a\n    encoding: b64\n"
                                      "    content: aGVsbG8",
        [(E, 5, 'content cannot be decoded as "b64"')]),
    row("base64-line-breaks-skipped", H + "write_files:\n  - path: /etc/a\n    encoding: b64\n"
                                          "    content: |\n      aGVs\n      bG8K\n", []),
    row("gzip-body-corrupt-passes", H + "write_files:\n  - path: /etc/a\n    encoding: gz+b64\n"
                                        "    content: H4sIAAAAAAACA8tIzcnJ5wIAIDA6yQYAAAA=",
        [], [(W, 5, "gzip data is corrupt")]),
    row("gzip-body-truncated-passes", H + "write_files:\n  - path: /etc/a\n    encoding: gz+b64\n"
                                          "    content: H4sIAAAAAAACA8tIzcnJ5wIAIDA6Ng==",
        [], [(W, 5, "gzip data is truncated")]),
    # rules_test.go: checkWriteFiles (the file's directory, as a string prefix)
    row("write-valid", H + "write_files:\n  - path: /valid\n  - path: /tmp/usr/valid", []),
    row("write-usr", H + "write_files:\n  - path: /usr/invalid",
        [(E, 3, "file cannot be written to a read-only filesystem")]),
    row("write-usr-dotdot-dashed", H + "write-files:\n  - path: /tmp/../usr/invalid",
        [(E, 3, "file cannot be written to a read-only filesystem")]),
    row("write-usr-prefix", H + "write_files:\n  - path: /usrlocal/x",
        [(E, 3, "file cannot be written to a read-only filesystem")]),
    row("write-usr-itself", H + "write_files:\n  - path: /usr", []),
    row("write-relative", H + "write_files:\n  - path: etc/motd", [], [(W, 3, "is relative")]),
    # rules_test.go: checkWriteFilesUnderCoreos (with checkStructure's own warning)
    row("write-files-under-coreos", H + "coreos:\n  write_files:\n    - path: /hi",
        [(I, 3, "write_files doesn't belong under coreos"),
         (W, 3, 'unrecognized key "write_files"')]),
    row("write-files-dashed-under-coreos", H + "coreos:\n  write-files:\n    - path: /hyphen",
        [(I, 3, "write_files doesn't belong under coreos"),
         (W, 3, 'unrecognized key "write-files"')]),
    # rules_test.go: checkDiscoveryUrl (etcd v0.4 only)
    row("etcd-discovery-url", H + "coreos:\n  etcd:\n    discovery: https://discovery.etcd.io/0",
        [], [(W, 3, "configures etcd v0.4")]),
    row("etcd-discovery-not-url", H + "coreos:\n  etcd:\n    discovery: disco",
        [(W, 4, "discovery URL is not valid")], [(W, 3, "configures etcd v0.4")]),
    # our stricter checks, where coreos-cloudinit is silent
    row("unit-without-name", H + "coreos:\n  units:\n    - command: start", [],
        [(E, 4, 'missing required key "name"')]),
    row("file-without-path", H + "write_files:\n  - content: x", [],
        [(E, 3, 'missing required key "path"')]),
    row("dash-underscore-duplicate", H + "coreos:\n  fleet:\n    public-ip: a\n    public_ip: b",
        [], [(E, 5, 'duplicate key "public_ip"')]),
    row("initial-cluster-state-old", H + "coreos:\n  etcd2:\n    initial-cluster-state: old",
        [], [(W, 4, "fails at boot")]),
    row("manage-etc-hosts-true", H + "manage_etc_hosts: true", [],
        [(W, 2, "fails at boot")]),
]


def _expected(cloudinit: list[tuple], ours: list[tuple]) -> list[tuple[str, int, str]]:
    return sorted((e[0], e[3] if len(e) > 3 else e[1], e[2]) for e in cloudinit + ours)


@pytest.mark.parametrize("text, cloudinit, ours", ROWS)
def test_report_matches_coreos_cloudinit(text, cloudinit, ours):
    problems = validate_user_data(text, "user-data")
    got = sorted((p.severity, p.line, p.message) for p in problems)
    expected = _expected(cloudinit, ours)
    assert [(s, line) for s, line, _ in got] == [(s, line) for s, line, _ in expected], got
    unmatched = list(got)
    for severity, line, gist in expected:
        match = next((g for g in unmatched if g[:2] == (severity, line) and gist in g[2]), None)
        assert match is not None, (severity, line, gist, got)
        unmatched.remove(match)


@pytest.mark.parametrize("text, cloudinit, ours", ROWS)
def test_exit_status_follows_one_rule(capsys, tmp_path, text, cloudinit, ours):
    path = tmp_path / "user-data"
    path.write_bytes(text.encode("utf-8"))
    entries = cloudinit + ours
    has_error = any(e[0] == E for e in entries)
    assert main(["validate", "--user-data", str(path)]) == (2 if has_error else 0)
    assert main(["validate", "--strict", "--user-data", str(path)]) == (2 if entries else 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 2 * len(entries)
    for line in err.splitlines():
        assert line.startswith(f"{path}:")


def test_the_table_covers_every_rule_and_level():
    gists = " ".join(e[2] for p in ROWS for e in p.values[1])
    for rule_message in ("must be", "unrecognized key", "incorrect type", "deprecated key",
                         "invalid value", "content cannot be decoded",
                         "read-only filesystem", "doesn't belong under coreos",
                         "discovery URL is not valid"):
        assert rule_message in gists, rule_message
    assert len(ROWS) >= 40
