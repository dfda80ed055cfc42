r"""`$private_ipv4` substitution: coreos-cloudinit's boot pass, and `render --substitute`.

The boot pass follows initialize/env.go's Apply: `([^\\]|^)$var` → value, then
`\$var` → `$var`. `--substitute` must write what that boot pass leaves as the
unsubstituted file would leave it, so rendering with it changes nothing a
node ends up with.
"""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from provision.render.cloudconfig import node_cloud_config
from provision.render.pipeline import render_cluster
from provision.spec.build import load_cluster
from provision.spec.discovery import Resolved
from provision.userdata import validate_user_data
from provision.userdata.substitution import (
    PRIVATE_IPV4,
    PUBLIC_IPV4,
    boot_substitute,
    pre_substitute,
)
from provision.yamltext import scalar
from tests.conftest import CLUSTERS, cluster_pki, node_tls

IP = "10.0.0.7"
VALUES = {PRIVATE_IPV4: IP, PUBLIC_IPV4: IP}

BOOT = [
    ("$private_ipv4", IP),
    ("http://$private_ipv4:2379", f"http://{IP}:2379"),
    ("\\$private_ipv4", "$private_ipv4"),                      # escaped: kept, unescaped
    ("a\\$private_ipv4 b$private_ipv4", f"a$private_ipv4 b{IP}"),
    ("\\\\$private_ipv4", "\\$private_ipv4"),                  # one backslash consumed
    ("$private_ipv4$private_ipv4", f"{IP}$private_ipv4"),      # the match eats the "[^\\]"
    ("x$private_ipv4$private_ipv4", f"x{IP}$private_ipv4"),
    ("$private_ipv4 $private_ipv4", f"{IP} {IP}"),
    ("$public_ipv4,$private_ipv4", f"{IP},{IP}"),
    ("$private_ipv4x", f"{IP}x"),                              # a plain text match
    ("$private_ipv6", "$private_ipv6"),                        # not in VALUES: untouched
    ("no variables", "no variables"),
]


@pytest.mark.parametrize("text, booted", BOOT, ids=[t for t, _ in BOOT])
def test_boot_substitution_is_coreos_cloudinits(text, booted):
    assert boot_substitute(text, VALUES) == booted


PRE = [
    ("$private_ipv4", IP),
    ("\\$private_ipv4", "\\$private_ipv4"),        # escaped: left alone, escape and all
    ("echo \\$public_ipv4 $public_ipv4", f"echo \\$public_ipv4 {IP}"),
    ("\\\\$private_ipv4", "\\\\$private_ipv4"),
    ("$private_ipv4$private_ipv4", f"{IP}\\$private_ipv4"),  # what boot would keep literal
]


@pytest.mark.parametrize("text, written", PRE, ids=[t for t, _ in PRE])
def test_pre_substitution_keeps_what_boot_keeps_literal(text, written):
    assert pre_substitute(text, VALUES) == written
    assert boot_substitute(written, VALUES) == boot_substitute(text, VALUES)


pieces = st.lists(st.sampled_from(["$private_ipv4", "$public_ipv4", "\\", "$", "a", " ",
                                   "private_ipv4", "\n"]), max_size=12).map("".join)


@settings(max_examples=500, deadline=None)
@given(pieces)
def test_boot_after_pre_substitution_equals_boot(text):
    assert boot_substitute(pre_substitute(text, VALUES), VALUES) == \
        boot_substitute(text, VALUES)


def test_substitute_keeps_escaped_variables_in_the_model(cluster_file):
    path = cluster_file(
        "name: demo\nnodes: {count: 1}\n"
        "write_files:\n"
        "  - path: /etc/motd\n"
        "    content: 'ip $private_ipv4, literal \\$private_ipv4'\n"
        "node_units:\n"
        "  - name: echo.service\n"
        "    content: \"[Service]\\nExecStart=/bin/echo \\\\$public_ipv4 $public_ipv4\\n\"\n")
    cluster, _ = load_cluster(path)
    (node,) = cluster.nodes
    config = node_cloud_config(cluster, node, Resolved(None, 1), substitute=True,
                               tls=node_tls(cluster, node))
    ip = str(node.ip)
    assert config["write_files"][-1]["content"] == f"ip {ip}, literal \\$private_ipv4"
    unit = next(u for u in config["coreos"]["units"] if u["name"] == "echo.service")
    assert unit["content"] == f"[Service]\nExecStart=/bin/echo \\$public_ipv4 {ip}\n"
    assert config["coreos"]["etcd2"]["listen-peer-urls"] == f"https://{ip}:2380"


ESCAPED = ["\\$private_ipv4", "a\\$public_ipv4b", "x\\$private_ipv4\n\\$public_ipv4\n",
           "tab\t\\$private_ipv4", "quote ' \\$private_ipv4"]


def _booted(text: str, ip: str) -> object:
    """What coreos-cloudinit parses on the node: the raw text substituted, then YAML."""
    return yaml.safe_load(boot_substitute(text, {PRIVATE_IPV4: ip, PUBLIC_IPV4: ip}))


def _rendered(cluster, substitute: bool) -> dict[str, str]:
    disc = Resolved("https://discovery.example/t", len(cluster.members))
    return {f.name: f.text for f in render_cluster(cluster, disc, substitute=substitute,
                                                      pki=cluster_pki(cluster))
            if f.name.startswith("user-data-")}


@pytest.mark.parametrize("value", ESCAPED, ids=[repr(v) for v in ESCAPED])
def test_a_node_boots_the_same_with_or_without_substitute(cluster_file, value):
    data = {"name": "demo", "nodes": {"count": 1},
            "etcd": {"settings": {"cors": value.replace("\n", " ")}},
            "write_files": [{"path": "/etc/one-line", "content": value.replace("\n", " ")},
                            {"path": "/etc/lines", "content": value + "\n"}]}
    cluster, _ = load_cluster(cluster_file(yaml.safe_dump(data)))
    (node,) = cluster.nodes
    ip = str(node.ip)
    plain, substituted = _rendered(cluster, False), _rendered(cluster, True)
    booted = _booted(plain["user-data-1"], ip)
    assert _booted(substituted["user-data-1"], ip) == booted
    # and what boots is the model with coreos-cloudinit's substitution applied to each value
    model = node_cloud_config(cluster, node, Resolved(None, 1),
                              tls=node_tls(cluster, node))
    at_boot = {PRIVATE_IPV4: ip, PUBLIC_IPV4: ip}
    files = {f["path"]: f["content"] for f in booted["write_files"]}
    for wf in model["write_files"]:
        assert files[wf["path"]] == boot_substitute(wf["content"], at_boot)
    assert booted["coreos"]["etcd2"]["cors"] == boot_substitute(value.replace("\n", " "),
                                                                 at_boot)


@pytest.mark.parametrize("name", sorted(p.name for p in CLUSTERS.glob("*.yaml")))
def test_examples_boot_the_same_with_or_without_substitute(name):
    cluster, _ = load_cluster(CLUSTERS / name)
    plain, substituted = _rendered(cluster, False), _rendered(cluster, True)
    for node in cluster.nodes:
        text = substituted[node.user_data_name]
        assert validate_user_data(text, node.user_data_name) == []
        assert _booted(text, str(node.ip)) == _booted(plain[node.user_data_name], str(node.ip))


def test_backslash_values_are_single_quoted_so_boot_keeps_them_yaml():
    # Double-quoted, `\$private_ipv4` would be written `\\$private_ipv4`; boot's
    # unescaping would leave `\$`, an escape YAML refuses.
    written = scalar("a \\$private_ipv4")
    assert written == "'a \\$private_ipv4'"
    assert yaml.safe_load("k: " + boot_substitute(written, VALUES)) == {"k": "a $private_ipv4"}
    assert scalar("it's \\x") == "'it''s \\x'"
    assert scalar("bell\x07\\") == '"bell\\x07\\\\"'  # not single-quotable: escaped


def test_a_trailing_newline_never_goes_out_plain():
    assert yaml.safe_load("k: " + scalar("$\n") + "\n") == {"k": "$\n"}
