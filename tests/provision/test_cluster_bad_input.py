"""Every bad cluster definition ends in one clear positioned line, exit 2, nothing written."""

from __future__ import annotations

import pytest

BASE = """\
name: demo
nodes:
  count: 3
"""

CASES = [
    # (id, yaml text, expected message fragment, expected line or None)
    ("malformed-yaml", "name: demo\nnodes: [\n", "malformed YAML", 3),
    ("tab-indent", "name: demo\nnodes:\n\tcount: 3\n", "malformed YAML", 3),
    ("duplicate-key", "name: demo\nname: other\nnodes: {count: 1}\n", "duplicate key `name`", 2),
    ("empty-file", "", "must be a mapping", None),
    ("top-level-list", "- a\n- b\n", "must be a mapping", 1),
    ("nul-byte", "name: demo\x00\nnodes: {count: 1}\n", "U+0000", 1),
    ("missing-name", "nodes: {count: 1}\n", "missing the required key `name`", 1),
    ("bad-cluster-name", "name: Demo_1\nnodes: {count: 1}\n", "`name` must be 1-63", 1),
    ("unknown-key-suggests", "name: demo\nnodez: {count: 1}\n",
     "unknown key `nodez` (did you mean `nodes`?)", 2),
    ("unknown-nested-key", BASE + "etcd:\n  discovery:\n    mode: static\n    domian: x.com\n",
     "unknown key `domian` in `etcd.discovery` (did you mean `domain`?)", 7),
    ("wrong-type-count", "name: demo\nnodes:\n  count: three\n",
     "`nodes.count` must be an integer, not a string", 3),
    ("wrong-type-metadata", BASE + "fleet:\n  metadata: [a, b]\n",
     "`fleet.metadata` must be a mapping, not a list", 5),
    ("count-zero", "name: demo\nnodes:\n  count: 0\n", "`nodes.count` must be at least 1", 3),
    ("empty-node-list", "name: demo\nnodes: []\n", "at least 1", 2),
    ("duplicate-node-names",
     "name: demo\nnodes:\n  - name: core-01\n  - name: core-01\n",
     "duplicate node name `core-01`", 4),
    ("duplicate-ips",
     "name: demo\nnodes:\n  - {name: a, ip: 127.77.0.9}\n  - {name: b, ip: 127.77.0.9}\n",
     "already used by node `a`", 4),
    ("explicit-ip-collides-with-allocated",
     "name: demo\nnodes:\n  - {name: a}\n  - {name: b, ip: 127.77.0.1}\n",
     "already used by node `a`", 4),
    ("too-many-nodes", "name: demo\nnetwork: {cidr: 127.77.0.0/29}\nnodes: {count: 7}\n",
     "holds 6 node addresses", 2),
    ("invalid-cidr", "name: demo\nnetwork: {cidr: 127.77.0.0/33}\nnodes: {count: 1}\n",
     "`network.cidr`", 2),
    ("cidr-host-bits", "name: demo\nnetwork: {cidr: 127.77.0.5/24}\nnodes: {count: 1}\n",
     "did you mean 127.77.0.0/24", 2),
    ("invalid-ip", "name: demo\nnodes:\n  - {name: a, ip: 999.1.1.1}\n",
     "'999.1.1.1' is not an IPv4 address", 3),
    ("ip-outside-network", "name: demo\nnodes:\n  - {name: a, ip: 127.99.0.1}\n",
     "outside the cluster network", 3),
    ("local-not-loopback", "name: demo\nnetwork: {cidr: 10.0.0.0/24}\nnodes: {count: 1}\n",
     "use a 127.x network", 2),
    ("vagrant-loopback",
     "name: demo\nprovider: vagrant\nnetwork: {cidr: 127.0.0.0/24}\nnodes: {count: 1}\n",
     "not a loopback range", 3),
    ("nspawn-loopback",
     "name: demo\nprovider: nspawn\nnetwork: {cidr: 127.0.0.0/24}\nnodes: {count: 1}\n",
     "nspawn machines need a private network", 3),
    ("nspawn-public",
     "name: demo\nprovider: nspawn\nnetwork: {cidr: 8.8.8.0/24}\nnodes: {count: 1}\n",
     "exists only in the cluster's network namespace", 3),
    ("unknown-provider", "name: demo\nprovider: vagrnt\nnodes: {count: 1}\n",
     "(did you mean `vagrant`?)", 2),
    ("override-unknown-node",
     "name: demo\nnodes:\n  count: 2\n  overrides:\n    core-3: {metadata: {a: b}}\n",
     "no node is named `core-3`", 5),
    ("members-not-nodes", BASE + "etcd:\n  members: [core-01, core-09]\n",
     "`core-09` is not a node of this cluster", 5),
    ("members-twice", BASE + "etcd:\n  members: [core-01, core-01]\n",
     "lists `core-01` twice", 5),
    ("members-bad-type", BASE + "etcd:\n  members: some\n", "must be `all` or a list", 5),
    ("unknown-mode", BASE + "etcd:\n  discovery: {mode: tokn}\n", "(did you mean `token`?)", 5),
    ("dns-srv-without-domain", BASE + "etcd:\n  discovery: {mode: dns-srv}\n",
     "needs `etcd.discovery.domain`", 5),
    ("dns-srv-bad-domain", BASE + "etcd:\n  discovery: {mode: dns-srv, domain: 'a b'}\n",
     "is not a DNS domain name", 5),
    ("custom-without-node", BASE + "etcd:\n  discovery: {mode: custom}\n",
     "needs `etcd.discovery.node`", 5),
    ("custom-node-unknown", BASE + "etcd:\n  discovery: {mode: custom, node: core-1}\n",
     "no node is named `core-1` (did you mean `core-01`?)", 5),
    ("key-for-other-mode", BASE + "etcd:\n  discovery: {mode: static, domain: a.com}\n",
     "applies only to dns-srv discovery", 5),
    ("token-url-not-url", BASE + "etcd:\n  discovery: {mode: token, url: 'ftp://x'}\n",
     "must be an http(s) URL", 5),
    ("same-ports", BASE + "etcd:\n  client_port: 2380\n", "must differ", 5),
    ("port-range", BASE + "etcd:\n  client_port: 70000\n", "at most 65535", 5),
    ("metadata-comma", BASE + "fleet:\n  metadata: {region: 'us,west'}\n",
     "must not contain `,`, `=`", 5),
    ("metadata-equals", BASE + "fleet:\n  metadata: {region: 'a=b'}\n",
     "must not contain `,`, `=`", 5),
    ("metadata-bad-key", BASE + "fleet:\n  metadata: {'re gion': a}\n",
     "metadata keys may hold only", 5),
    ("write-files-under-usr", BASE + "write_files:\n  - {path: /usr/bin/x, content: hi}\n",
     "under /usr, which is read-only", 5),
    ("write-files-usr-via-dotdot", BASE + "write_files:\n  - {path: /etc/../usr/x}\n",
     "under /usr", 5),
    ("write-files-usr-prefix", BASE + "write_files:\n  - {path: /usrlocal/x}\n",
     "directory starts with /usr", 5),
    ("write-files-not-base64",
     BASE + "write_files:\n  - {path: /etc/x, encoding: base64, content: 'a b'}\n",
     "`write_files.0.content` cannot be decoded as 'base64'", 5),
    ("write-files-not-gzip",
     BASE + "write_files:\n  - {path: /etc/x, encoding: gz+b64, content: aGVsbG8=}\n",
     "not gzip data", 5),
    ("etcd-setting-invalid-value", BASE + "etcd:\n  settings:\n    proxy: maybe\n",
     "`etcd.settings`: invalid value maybe for \"proxy\"", 6),
    ("etcd-setting-unquoted-on", BASE + "etcd:\n  settings:\n    proxy: on\n",
     "so quote the value", 6),
    ("node-fleet-setting-invalid", "name: demo\nnodes:\n  - name: a\n    etcd2:\n"
     "      proxy: sometimes\n", "`nodes.0.etcd2`: invalid value sometimes", 5),
    ("write-files-relative", BASE + "write_files:\n  - {path: etc/x}\n",
     "must be an absolute path", 5),
    ("write-files-permissions", BASE + "write_files:\n  - {path: /etc/x, permissions: 644}\n",
     "`write_files.0.permissions` must be a quoted octal mode such as \"0644\"", 5),
    ("node-unit-bad-name", BASE + "node_units:\n  - {name: etcd2, command: start}\n",
     "node_units.0.name", 5),
    ("node-unit-bad-command", BASE + "node_units:\n  - {name: a.service, command: begin}\n",
     "must be one of start", 5),
    ("agent-ttl-format", BASE + "fleet:\n  agent_ttl: five\n", "must be a duration", 5),
    ("flannel-bad-network", BASE + "flannel:\n  config: {Network: 10.1.0.0/33}\n",
     "`flannel.config.Network`", 5),
    ("flannel-config-without-network", BASE + "flannel:\n  config: {Backend: x}\n",
     "missing the required key `Network`", 5),
]


@pytest.mark.parametrize("text,fragment,line", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_cluster_is_one_clear_line(cluster_file, run_cli, tmp_path, text, fragment, line):
    path = cluster_file(text)
    out = tmp_path / "out"
    result = run_cli("render", str(path), "-o", str(out))
    assert result.code == 2
    assert "Traceback" not in result.err
    assert fragment in result.err, result.err
    (hit,) = [entry for entry in result.err.splitlines() if fragment in entry][:1]
    if line is None:
        assert hit.startswith(f"{path}: ")
    else:
        assert hit.startswith(f"{path}:{line}:"), hit
    assert not out.exists(), "nothing may be written for a bad definition"
    assert run_cli("validate", str(path)).code == 2


def test_all_problems_are_reported_at_once(cluster_file, run_cli):
    path = cluster_file("name: demo\nnodez: 1\nprovider: aws\nnetwork: {cidr: x, start: 0}\n")
    result = run_cli("validate", str(path))
    assert result.code == 2
    lines = result.err.splitlines()
    assert len(lines) >= 4, lines
    assert all(line.startswith(str(path)) for line in lines)


def test_alias_bomb_is_refused_quickly(cluster_file, run_cli):
    rows = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, cur in zip("abcdefg", "bcdefgh", strict=True):
        rows.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = cluster_file("\n".join(rows) + "\nname: demo\nnodes: {count: 1}\n")
    result = run_cli("validate", str(path))
    assert result.code == 2
    assert "alias bomb" in result.err


def test_deep_yaml_is_refused(cluster_file, run_cli):
    path = cluster_file("name: demo\nnodes: " + "[" * 5000 + "]" * 5000 + "\n")
    result = run_cli("validate", str(path))
    assert result.code == 2
    assert "nested deeper" in result.err


def test_missing_file(run_cli, tmp_path):
    result = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert result.code == 2
    assert "no such file" in result.err


def test_even_member_count_is_a_warning_not_an_error(cluster_file, run_cli):
    path = cluster_file("name: demo\nnodes: {count: 2}\n")
    result = run_cli("validate", str(path))
    assert result.code == 0
    assert "warning: 2 etcd members" in result.err
