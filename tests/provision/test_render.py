"""Rendering: every example renders, parses back to exactly the model's values and validates."""

from __future__ import annotations

import json
import stat

import pytest
import yaml

from provision.render.cloudconfig import node_cloud_config
from provision.render.pipeline import render_cluster
from provision.spec.build import load_cluster
from provision.spec.discovery import Resolved
from tests.conftest import CLUSTERS, cluster_pki, node_tls

EXAMPLES = sorted(p.name for p in CLUSTERS.glob("*.yaml"))


def render_example(run_cli, tmp_path, name, *extra):
    out = tmp_path / "out"
    result = run_cli("render", str(CLUSTERS / name), "-o", str(out), *extra)
    assert result.code == 0, result.err
    return out


def test_every_example_is_covered():
    assert {"local.yaml", "vagrant.yaml", "token.yaml", "custom-etcd.yaml", "dns-srv.yaml",
            "large.yaml"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES, ids=EXAMPLES)
def test_example_renders_round_trips_and_validates(run_cli, tmp_path, name):
    out = render_example(run_cli, tmp_path, name)
    cluster, _ = load_cluster(CLUSTERS / name)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [n["name"] for n in manifest["nodes"]] == [n.name for n in cluster.nodes]
    url = manifest["etcd"]["discovery"].get("url")
    for node in cluster.nodes:
        path = out / node.user_data_name
        text = path.read_text()
        assert text.startswith("#cloud-config\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        expected = node_cloud_config(cluster, node, Resolved(url, len(cluster.members)),
                                     tls=node_tls(cluster, node))
        assert yaml.safe_load(text) == expected
    result = run_cli("validate", "--user-data", *(str(out / n.user_data_name)
                                                  for n in cluster.nodes))
    assert result.code == 0, result.err
    assert result.err == "", "rendered user-data must have no warnings either"


def test_example_validates(run_cli):
    result = run_cli("validate", *(str(CLUSTERS / n) for n in EXAMPLES))
    assert result.code == 0, result.err
    assert result.out.count("valid:") == len(EXAMPLES)


def load_user_data(out, index):
    return yaml.safe_load((out / f"user-data-{index}").read_text())


def test_static_members_get_their_own_name_and_the_initial_cluster(run_cli, tmp_path):
    out = render_example(run_cli, tmp_path, "vagrant.yaml")
    initial = ("core-01=https://172.17.8.101:2380,core-02=https://172.17.8.102:2380,"
               "core-03=https://172.17.8.103:2380")
    for i in (1, 2, 3):
        etcd2 = load_user_data(out, i)["coreos"]["etcd2"]
        assert etcd2["name"] == f"core-0{i}"
        assert etcd2["initial-cluster"] == initial
        assert etcd2["initial-cluster-token"] == "coreOS-static"
        assert etcd2["initial-cluster-state"] == "new"
        assert etcd2["initial-advertise-peer-urls"] == "https://$private_ipv4:2380"
        assert etcd2["advertise-client-urls"] == "https://$public_ipv4:2379"


def test_flannel_network_config_lands_in_a_drop_in(run_cli, tmp_path):
    out = render_example(run_cli, tmp_path, "vagrant.yaml")
    config = load_user_data(out, 1)
    assert config["coreos"]["flannel"] == {
        "interface": "$public_ipv4", "etcd-endpoints": "https://$private_ipv4:2379",
        "etcd-cafile": "/etc/ssl/etcd/ca.pem", "etcd-certfile": "/etc/ssl/etcd/fleetd.pem",
        "etcd-keyfile": "/etc/ssl/etcd/fleetd-key.pem"}
    flanneld = next(u for u in config["coreos"]["units"] if u["name"] == "flanneld.service")
    assert flanneld["command"] == "start"
    drop_in = flanneld["drop-ins"][0]
    assert drop_in["name"] == "50-network-config.conf"
    assert drop_in["content"] == (
        "[Service]\nExecStartPre=/usr/bin/etcdctl set /coreos.com/network/config "
        "'{\"Network\": \"10.1.0.0/16\"}'\n")


def test_few_members_rest_are_proxies(run_cli, tmp_path):
    out = render_example(run_cli, tmp_path, "large.yaml")
    manifest = json.loads((out / "manifest.json").read_text())
    roles = {n["name"]: n["roles"][0] for n in manifest["nodes"]}
    assert [n for n, r in roles.items() if r == "etcd-member"] == ["etcd-1", "etcd-2", "etcd-3"]
    assert sum(r == "etcd-proxy" for r in roles.values()) == 7
    worker = load_user_data(out, 4)["coreos"]
    assert worker["etcd2"]["proxy"] == "on"  # a string: unquoted `on` would be a boolean
    assert "initial-advertise-peer-urls" not in worker["etcd2"]
    assert worker["etcd2"]["initial-cluster"].count("=https://") == 3
    assert worker["fleet"]["metadata"] == "region=us-west,role=worker"
    assert load_user_data(out, 10)["coreos"]["fleet"]["metadata"] == \
        "region=us-west,role=worker,disk=ssd"


def test_token_url_in_yaml_is_used_as_is(run_cli, tmp_path):
    out = render_example(run_cli, tmp_path, "token.yaml")
    etcd2 = load_user_data(out, 2)["coreos"]["etcd2"]
    assert etcd2["discovery"] == "https://discovery.etcd.io/ea524a83ed3f84e550417f0fb89e91c8"
    assert "initial-cluster" not in etcd2
    assert not (out / "discovery.json").exists()


def test_custom_discovery_node_is_stripped_and_members_use_it(run_cli, tmp_path):
    out = render_example(run_cli, tmp_path, "custom-etcd.yaml")
    manifest = json.loads((out / "manifest.json").read_text())
    disc = manifest["etcd"]["discovery"]
    assert disc["node"] == "core-01" and disc["size"] == 3
    assert disc["url"].startswith("http://127.78.0.1:2379/v2/keys/discovery/")
    assert disc["size_key_url"] == disc["url"] + "/_config/size"
    first = load_user_data(out, 1)["coreos"]
    for key in ("discovery", "initial-advertise-peer-urls", "listen-peer-urls"):
        assert key not in first["etcd2"]
    assert first["fleet"]["etcd-servers"] == (
        "https://127.78.0.2:2379,https://127.78.0.3:2379,https://127.78.0.4:2379")
    for i in (2, 3, 4):
        assert load_user_data(out, i)["coreos"]["etcd2"]["discovery"] == disc["url"]
    # Re-rendering the same cluster keeps the same UUID (members already registered under it).
    again = render_example(run_cli, tmp_path, "custom-etcd.yaml")
    assert json.loads((again / "manifest.json").read_text())["etcd"]["discovery"]["url"] == \
        disc["url"]


def test_dns_srv_writes_resolv_conf_and_zone(run_cli, tmp_path):
    out = render_example(run_cli, tmp_path, "dns-srv.yaml")
    config = load_user_data(out, 1)
    etcd2 = config["coreos"]["etcd2"]
    assert etcd2["discovery-srv"] == "testdomain.com"
    assert etcd2["initial-advertise-peer-urls"] == "https://coreos-01.testdomain.com:2380"
    assert etcd2["initial-cluster-token"] == "etcd-cluster-1"
    assert config["write_files"][0] == {"path": "/etc/resolv.conf", "permissions": "0644",
                                        "owner": "root", "content": "nameserver 172.17.8.111\n"}
    zone = (out / "etcd-srv.zone").read_text().splitlines()
    records = [line.split() for line in zone if line and not line.startswith(";")]
    assert ["_etcd-server-ssl._tcp.testdomain.com.", "300", "IN", "SRV", "0", "0", "2380",
            "coreos-02.testdomain.com."] in records
    assert ["coreos-03.testdomain.com.", "300", "IN", "A", "172.17.8.103"] in records
    assert sum(r[3] == "SRV" for r in records) == 6


def test_substitute_writes_real_ips(run_cli, tmp_path):
    out = render_example(run_cli, tmp_path, "local.yaml", "--substitute")
    text = (out / "user-data-2").read_text()
    assert "$private_ipv4" not in text and "$public_ipv4" not in text
    config = yaml.safe_load(text)
    assert config["coreos"]["etcd2"]["listen-peer-urls"] == "https://127.77.0.2:2380"
    assert config["coreos"]["fleet"]["public-ip"] == "127.77.0.2"


def test_local_example_declares_web_units_with_sidekick():
    cluster, _ = load_cluster(CLUSTERS / "local.yaml")
    (web,) = cluster.units
    assert web.unit_names == ("web@1.service", "web@2.service")
    assert web.sidekick is not None and web.sidekick.port == 8080
    assert dict(cluster.node("core-03").metadata) == {"region": "local", "disk": "ssd"}


HOSTILE = ["it's \"quoted\"", "a: b # c", "on", "0644", "- dash", "{x}", "tab\there",
           "nl\nin value", "trailing ", "ünïcødé ☃ 𝄞", "\\backslash", "%specifier", "*alias"]


@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v) for v in HOSTILE])
def test_hostile_values_round_trip(cluster_file, tmp_path, value):
    path = cluster_file("name: demo\nnodes: {count: 1}\n")
    import yaml as _yaml

    data = {
        "name": "demo", "nodes": {"count": 1},
        "ssh_authorized_keys": [value],
        "etcd": {"settings": {"cors": value}},
        "write_files": [{"path": "/etc/hostile", "content": value + "\n" + value}],
        "node_units": [{"name": "x.service", "content": f"[Service]\nExecStart=/bin/echo {value}\n",
                        "drop-ins": [{"name": "10-x.conf", "content": value}]}],
        "flannel": {"config": {"Network": "10.1.0.0/16", "Note": value}},
    }
    path.write_text(_yaml.safe_dump(data))
    cluster, _ = load_cluster(path)
    (node,) = cluster.nodes
    disc = Resolved(None, 1)
    (user_data,) = [f for f in render_cluster(cluster, disc, pki=cluster_pki(cluster))
                     if f.name == "user-data-1"]
    assert yaml.safe_load(user_data.text) == node_cloud_config(cluster, node, disc,
                                                                 tls=node_tls(cluster, node))
