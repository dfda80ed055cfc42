"""The etcd discovery modes: one object each, in one table that the schema, model building,
rendering, the certificates and the providers share. The pure parts, table-tested."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import provision.spec.discovery as discovery_package
from provision.errors import UserError
from provision.pki import cert_specs
from provision.render.cloudconfig import addresses, etcd2_section, node_write_files
from provision.spec.build import build_cluster
from provision.spec.discovery import (
    MODES,
    BootNeeds,
    DiscoveryMode,
    DnsZone,
    ResolveContext,
    Resolved,
    boot_needs,
    mode_of,
    schema_keys,
)
from provision.spec.schema import cluster_schema
from provision.yamlmarks import load_yaml

BASE = "name: demo\nnodes:\n  count: 3\n"
DISCOVERY = {
    "static": "{mode: static}",
    "token": "{mode: token, url: 'https://discovery.example/abc'}",
    "custom": "{mode: custom, node: core-01}",
    "dns-srv": "{mode: dns-srv, domain: example.com, dns_server: 127.77.0.53}",
    "dns-srv-no-server": "{mode: dns-srv, domain: example.com}",
}


def cluster_of(row: str):
    """core-01 is the discovery node (custom) or a proxy, core-02 and core-03 members."""
    text = f"{BASE}etcd:\n  members: [core-02, core-03]\n  discovery: {DISCOVERY[row]}\n"
    cluster, _ = build_cluster(load_yaml(text, "cluster.yaml"))
    return cluster


def test_every_mode_module_is_in_the_table_under_its_name():
    found = {}
    for info in pkgutil.iter_modules(discovery_package.__path__):
        module = importlib.import_module(f"provision.spec.discovery.{info.name}")
        if hasattr(module, "MODE"):
            found[module.MODE.name] = module.MODE
    assert found == MODES
    assert all(isinstance(mode, DiscoveryMode) and name == mode.name
               for name, mode in MODES.items())


def test_the_schema_is_made_from_the_table():
    section = cluster_schema()["properties"]["etcd"]["properties"]["discovery"]
    assert section["properties"]["mode"]["enum"] == list(MODES)
    assert set(section["properties"]) == {"mode", *schema_keys()}
    # The keys read by one mode first, the shared ones last (the suggestion order).
    assert list(schema_keys()) == ["url", "service", "node", "domain", "dns_server",
                                   "cluster_token"]


# (row, member etcd2 keys, proxy etcd2 keys, peer host of core-02, extra write_files,
#  extra certificate names of core-02, manifest keys, boot needs)
ROWS = {
    "static": (
        {"initial-cluster-token": "demo-etcd", "initial-cluster-state": "new"},
        {"initial-cluster"}, "$private_ipv4", [], (), ["mode", "size"], BootNeeds()),
    "token": (
        {"discovery": "https://discovery.example/abc"},
        {"discovery"}, "$private_ipv4", [], (), ["mode", "size", "url"], BootNeeds()),
    "custom": (
        {"discovery": "http://127.77.0.1:2379/v2/keys/discovery/id"},
        {"discovery"}, "$private_ipv4", [], (),
        ["mode", "size", "url", "node", "size_key_url"],
        BootNeeds("core-01", "http://127.77.0.1:2379/v2/keys/discovery/id", 2)),
    "dns-srv": (
        {"discovery-srv": "example.com", "initial-cluster-token": "demo-etcd",
         "initial-cluster-state": "new"},
        {"discovery-srv"}, "core-02.example.com", ["/etc/resolv.conf"],
        ("core-02.example.com",), ["mode", "size", "domain", "dns_server", "zone_file"],
        BootNeeds(dns=DnsZone("etcd-srv.zone", "example.com", "127.77.0.53"))),
    "dns-srv-no-server": (
        {"discovery-srv": "example.com"}, {"discovery-srv"}, "core-02.example.com", [],
        ("core-02.example.com",), ["mode", "size", "domain", "dns_server", "zone_file"],
        BootNeeds(dns=DnsZone("etcd-srv.zone", "example.com", None))),
}


@pytest.mark.parametrize(("row", "member", "proxy_keys", "peer_host", "files", "names",
                          "recorded", "needs"),
                         [(row, *values) for row, values in ROWS.items()], ids=list(ROWS))
def test_what_each_mode_answers(row, member, proxy_keys, peer_host, files, names, recorded,
                                needs):
    cluster = cluster_of(row)
    mode = mode_of(cluster)
    custom_url = "http://127.77.0.1:2379/v2/keys/discovery/id" if row == "custom" else None
    resolved = Resolved(cluster.etcd.discovery.url or custom_url, len(cluster.members))
    core2 = cluster.node("core-02")
    section = etcd2_section(cluster, core2, resolved, addresses(cluster, core2))
    assert {k: section[k] for k in member} == member
    assert addresses(cluster, core2).peer_host == peer_host
    assert [f.path for f in node_write_files(cluster, core2)] == files
    spec = next(s for s in cert_specs(cluster) if s.name == "core-02-server")
    assert spec.dns_names == ("core-02", "localhost", *names)
    record = mode.record(cluster, resolved)
    assert list(record.to_dict()) == recorded
    assert boot_needs(record) == needs
    if row != "custom":  # core-01 is a proxy
        proxy = cluster.node("core-01")
        keys = set(etcd2_section(cluster, proxy, resolved, addresses(cluster, proxy)))
        assert proxy_keys <= keys
        assert "initial-cluster-state" not in keys


def test_static_members_list_every_member():
    cluster = cluster_of("static")
    section = etcd2_section(cluster, cluster.node("core-02"), Resolved(None, 2),
                            addresses(cluster, cluster.node("core-02")))
    assert section["initial-cluster"] == cluster.initial_cluster
    assert list(section)[-3:] == ["initial-cluster-token", "initial-cluster",
                                  "initial-cluster-state"]


def test_only_dns_srv_renders_a_zone_file():
    for row in DISCOVERY:
        cluster = cluster_of(row)
        files = mode_of(cluster).rendered_files(cluster, lambda name, context: name)
        assert [name for name, _ in files] == (["etcd-srv.zone"] if row.startswith("dns-srv")
                                               else [])


# -- resolve: data in (the cache, the edge's means), data out --------------------------------

def context(cached=None, new_token=False, tokens=None):
    asked = tokens if tokens is not None else []

    def request(service, size):
        asked.append((service, size))
        return f"{service}/new-token"

    return ResolveContext(cached=cached, cache_path="out/discovery.json", new_token=new_token,
                          request_token=request, new_id=lambda: "fresh", now="T")


def token_cluster():
    text = f"{BASE}etcd:\n  discovery: {{mode: token, service: 'https://svc.example'}}\n"
    return build_cluster(load_yaml(text, "cluster.yaml"))[0]


def cached(**changes):
    return {"cluster": "demo", "mode": "token", "service": "https://svc.example",
            "url": "https://svc.example/old", "size": 3, "state": "fresh", **changes}


RESOLVE_TOKEN = {
    "nothing cached: asks": (None, False, "https://svc.example/new-token", 1),
    "cached: reused": (cached(), False, "https://svc.example/old", 0),
    "--new-token: asks": (cached(), True, "https://svc.example/new-token", 1),
    "another service: asks": (cached(service="https://other"), False,
                              "https://svc.example/new-token", 1),
    "another cluster's: asks": (cached(cluster="x"), False, "https://svc.example/new-token", 1),
    "spent: refused": (cached(state="spent"), False, "single-use", 0),
    "other size: refused": (cached(size=5), False, "made for 5 etcd members", 0),
}


@pytest.mark.parametrize(("cache", "new_token", "expected", "requests"),
                         RESOLVE_TOKEN.values(), ids=RESOLVE_TOKEN)
def test_token_resolve(cache, new_token, expected, requests):
    cluster, asked = token_cluster(), []
    try:
        resolved, record = MODES["token"].resolve(cluster, context(cache, new_token, asked))
    except UserError as err:
        assert expected in str(err) and str(err).startswith("out/discovery.json: ")
    else:
        assert resolved == Resolved(expected, 3)
        assert record is cache or record["url"] == expected
    assert len(asked) == requests


def test_custom_resolve_reuses_a_fresh_url_and_replaces_a_spent_one():
    cluster = cluster_of("custom")
    base = "http://127.77.0.1:2379/v2/keys/discovery/"
    resolved, record = MODES["custom"].resolve(cluster, context())
    assert resolved == Resolved(base + "fresh", 2) and record["state"] == "fresh"
    again, _ = MODES["custom"].resolve(cluster, context({**record, "url": base + "kept"}))
    assert again.url == base + "kept"
    spent = {**record, "url": base + "kept", "state": "spent"}
    assert MODES["custom"].resolve(cluster, context(spent))[0].url == base + "fresh"


@pytest.mark.parametrize("row", ["static", "dns-srv"])
def test_modes_without_a_url_resolve_to_nothing(row):
    cluster = cluster_of(row)
    assert mode_of(cluster).resolve(cluster, context()) == (Resolved(None, 2), None)
