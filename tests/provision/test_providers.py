"""The provider table and the nspawn provider's pure parts: names, addresses, files, argv."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from provision.providers import PROVIDERS, ClusterProvider, get_provider
from provision.providers.nspawn import layout
from provision.spec.build import load_cluster
from tests.conftest import CLUSTERS

SCHEMA = (Path(__file__).resolve().parents[2] / "provision" / "spec" / "schemas"
          / "cluster.schema.json")
INTERFACE = ("up", "down", "status", "node", "env", "namespace", "known_down",
             "network_problem", "host_problem", "rotate", "rotation_problem", "rendered_dir")


def test_every_provider_of_the_schema_is_in_the_table():
    schema = json.loads(SCHEMA.read_text())
    assert set(schema["properties"]["provider"]["enum"]) == set(PROVIDERS)


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_every_provider_implements_the_whole_interface(name):
    provider: ClusterProvider = get_provider(name)
    assert provider.name == name
    for method in INTERFACE:
        assert callable(getattr(provider, method)), f"{name} lacks {method}"
    cidr, first = provider.default_network
    assert provider.network_problem(ipaddress.ip_network(cidr)) is None
    assert first >= 1
    assert isinstance(provider.applies_units_after_up, bool)


@pytest.mark.parametrize(("provider", "cidr", "refused"), [
    ("local", "127.77.0.0/24", False),
    ("local", "172.17.8.0/24", True),
    ("vagrant", "172.17.8.0/24", False),
    ("vagrant", "127.0.0.0/24", True),
    ("nspawn", "172.17.8.0/24", False),
    ("nspawn", "10.9.0.0/16", False),
    ("nspawn", "127.0.0.0/24", True),
    ("nspawn", "8.8.8.0/24", True),
    ("nspawn", "172.17.8.0/30", True),  # no room for the bridge and a machine
])
def test_network_rules(provider, cidr, refused):
    problem = get_provider(provider).network_problem(ipaddress.ip_network(cidr))
    assert (problem is not None) == refused


def test_nspawn_cluster_defaults_to_the_coreos_vagrant_network(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: demo\nprovider: nspawn\nnodes: {count: 2}\n")
    cluster, _ = load_cluster(str(path))
    assert str(cluster.network) == "172.17.8.0/24"
    assert [str(n.ip) for n in cluster.nodes] == ["172.17.8.101", "172.17.8.102"]


def test_the_example_nspawn_cluster_loads():
    cluster, warnings = load_cluster(str(CLUSTERS / "nspawn.yaml"))
    assert cluster.provider == "nspawn" and len(cluster.nodes) == 3 and not warnings
    assert [u.name for u in cluster.units] == ["web@.service"]


# -- layout ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cluster", "expected"), [
    ("nspawn", "pvn-nspawn"),
    ("a" * 15, "pvn-" + "a" * 15),
])
def test_namespace_names(cluster, expected):
    assert layout.namespace(cluster) == expected


def test_long_cluster_names_get_short_distinct_namespaces():
    one, two = layout.namespace("a" * 40 + "x"), layout.namespace("a" * 40 + "y")
    assert one != two
    assert len(one) <= layout.NAMESPACE_MAX and len(two) <= layout.NAMESPACE_MAX


def test_machine_identity_is_stable_per_node_and_is_fleets():
    first = layout.machine_uuid("c", "core-01")
    assert first == layout.machine_uuid("c", "core-01")
    assert first != layout.machine_uuid("c", "core-02") != layout.machine_uuid("d", "core-01")
    # fleet's machine id is the machine's /etc/machine-id, as units' %m say.
    assert layout.fleet_machine_id("c", "core-01") == first.hex
    assert layout.machine_name("c", "core-01") == "pvn-c-core-01"


@pytest.mark.parametrize(("cidr", "taken", "expected"), [
    ("172.17.8.0/24", {"172.17.8.101"}, "172.17.8.1/24"),
    ("172.17.8.0/24", {"172.17.8.1", "172.17.8.2"}, "172.17.8.254/24"),
    ("10.0.0.0/29", {"10.0.0.2"}, "10.0.0.1/29"),
])
def test_bridge_address(cidr, taken, expected):
    assert str(layout.gateway(ipaddress.ip_network(cidr), taken)) == expected


def test_bridge_address_refused_when_no_room():
    with pytest.raises(ValueError, match="no free address"):
        layout.gateway(ipaddress.ip_network("10.0.0.0/30"), {"10.0.0.1", "10.0.0.2"})


SPEC = layout.MachineSpec("c", "core-02", "172.17.8.102", ipaddress.ip_network("172.17.8.0/24"),
                          "172.17.8.1")


def test_network_file_gives_the_static_address_and_gateway():
    text = layout.network_file(SPEC)
    assert "[Match]\nName=host0\n" in text
    assert "Address=172.17.8.102/24\n" in text and "Gateway=172.17.8.1\n" in text
    assert "LinkLocalAddressing=no" in text


def test_hosts_file_names_this_node_and_its_peers():
    text = layout.hosts_file("core-02", [("core-01", "172.17.8.101"), ("core-02", "172.17.8.102")])
    lines = text.splitlines()
    assert "127.0.0.1\tlocalhost" in lines and "127.0.1.1\tcore-02" in lines
    assert "172.17.8.101\tcore-01" in lines
    assert not any(line.startswith("172.17.8.102") for line in lines)


def test_first_boot_and_every_boot_files():
    first = layout.first_boot_files(SPEC, [("core-02", "172.17.8.102")])
    assert set(first) == {layout.NETWORK_FILE, layout.HOSTS_FILE, layout.FLEET_MACHINE_ID_FILE}
    assert first[layout.FLEET_MACHINE_ID_FILE][0].decode().strip() == SPEC.uuid.hex
    every = layout.every_boot_files(SPEC, "#cloud-config\n")
    assert every["/var/lib/provision/user-data"] == (b"#cloud-config\n", 0o600)
    assert b"COREOS_PRIVATE_IPV4=172.17.8.102" in every["/etc/environment"][0]
    assert every["/etc/hostname"][0] == b"core-02\n"
    assert "/etc/resolv.conf" not in every  # the image's: names no server


def test_a_dns_srv_machine_resolves_through_the_clusters_dns_server():
    every = layout.every_boot_files(SPEC, "#cloud-config\n", "172.17.8.53")
    assert every["/etc/resolv.conf"] == (b"nameserver 172.17.8.53\n", 0o644)


def test_nspawn_dns_server_must_be_a_free_address_of_the_network():
    from provision.providers.nspawn.nameserver import address_problem

    net = ipaddress.IPv4Network("172.17.8.0/24")
    nodes = {"172.17.8.101", "172.17.8.102"}
    assert address_problem(net, nodes, "172.17.8.1", None) is None
    assert address_problem(net, nodes, "172.17.8.1", "172.17.8.53") is None
    for bad in ("10.0.0.53", "172.17.8.101", "172.17.8.1", "172.17.8.255"):
        problem = address_problem(net, nodes, "172.17.8.1", bad)
        assert problem and problem.startswith(f"etcd.discovery.dns_server {bad} must be a "
                                              "free address of network.cidr 172.17.8.0/24")


def test_nspawn_argv():
    argv = layout.nspawn_argv(SPEC, Path("/img/rootfs"), Path("/s/upper"),
                              Path("/run/netns/pvn-c"))
    assert argv[:3] == ["nsenter", "--net=/run/netns/pvn-c", "--"]
    for flag in ("--read-only", "--overlay=/img/rootfs:/s/upper:/", "--boot",
                 "--register=no", "--keep-unit", "--network-bridge=br0",
                 f"--uuid={SPEC.uuid}", "--machine=pvn-c-core-02", "--resolv-conf=off"):
        assert flag in argv


def test_overlay_paths_with_a_colon_are_refused():
    assert layout.overlay_problem(Path("/a:b/upper")) is not None
    assert layout.overlay_problem(Path("/a/b/upper")) is None
