"""The local provider for real: etcd, fleetd and node units as processes on loopback addresses.

Each test brings up its own copy of an example on a random 127.x.y.0/24 network
with its own state directory, and leaves nothing behind: every test ends by
checking /proc for any process that names its state directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from provision.errors import OperationFailed, UserError
from provision.providers.local import control, dns, provider, state
from provision.providers.local.discovery import LocalDiscoveryService
from provision.providers.local.etcdbin import find_etcd
from tests.support.etcd import wait_for
from tests.support.localenv import (
    UP_TIMEOUT,
    Env,
    survivors,
)

REPO = Path(__file__).resolve().parents[2]
FAST_FLEET = {"agent_ttl": "5s", "engine_reconcile_interval": 1}  # as the local example



def rows(env: Env, name: str) -> dict[str, dict]:
    return {row["name"]: row for row in provider.status(name, state_root=env.state_root)}


def etcd_members(url: str, context=None) -> int:  # ssl.SSLContext
    with urllib.request.urlopen(f"{url}/v2/members", timeout=3,
                                context=context) as response:
        return len(json.load(response)["members"])


def test_static_cluster_up_status_node_stop_start_env_and_down(env):
    path, name = env.cluster("local.yaml")
    started = time.monotonic()
    assert env.up(path) == 0
    boot_s = time.monotonic() - started
    state_dir = env.state_dir(name)

    nodes = rows(env, name)
    assert sorted(nodes) == ["core-01", "core-02", "core-03"]
    for row in nodes.values():
        assert (row["state"], row["etcd"], row["fleet"]) == ("running", "healthy", "registered")
        assert set(row["pids"]) == {"etcd2.service", "fleet.service"}
    assert etcd_members(f"https://{nodes['core-01']['ip']}:2379", env.ssl_context(name)) == 3
    # write_files landed in the node root with their mode, IPs substituted.
    environment = state_dir / "nodes" / "core-02" / "root" / "etc" / "environment"
    assert f"COREOS_PUBLIC_IPV4={nodes['core-02']['ip']}" in environment.read_text()
    assert environment.stat().st_mode & 0o777 == 0o644

    exports = provider.env(name, state_root=env.state_root)
    assert f"export FLEETCTL_ENDPOINT=unix://{state_dir}/nodes/core-01/fleet/fleet.sock" in exports
    assert f"export ETCDCTL_ENDPOINTS=https://{nodes['core-01']['ip']}:2379," in exports
    assert f"export ETCDCTL_CERT={state_dir}/pki/admin.pem" in exports

    # Idempotent: a second up finds the same processes healthy and changes nothing.
    pids = {n: r["pids"] for n, r in nodes.items()}
    assert env.up(path) == 0
    assert {n: r["pids"] for n, r in rows(env, name).items()} == pids

    # Take a machine away: it leaves fleet; bring it back: it registers again.
    stopped_pids = set(nodes["core-02"]["pids"].values())
    provider.node_stop(name, "core-02", state_root=env.state_root)
    after = rows(env, name)
    assert after["core-02"]["state"] == "stopped"
    assert not any(state.pid_alive(pid) for pid in stopped_pids)
    wait_for(lambda: rows(env, name)["core-02"]["fleet"] == "absent", 15,
             message="core-02 left fleet")
    assert after["core-01"]["etcd"] == "healthy"  # two of three members keep quorum
    provider.node_start(name, "core-02", state_root=env.state_root, timeout=UP_TIMEOUT)
    back = rows(env, name)["core-02"]
    assert (back["state"], back["etcd"], back["fleet"]) == ("running", "healthy", "registered")

    message = provider.down(name, state_root=env.state_root)
    assert message == f"{name}: stopped"
    assert survivors(state_dir) == []
    # Followers stop before the raft leader (found over TLS with the node's certificate),
    # so no leader waits out a leadership transfer to a member that is stopping too.
    for node in ("core-01", "core-02", "core-03"):
        log = (state_dir / "nodes" / node / "system" / "logs" / "etcd2.service.log").read_text()
        assert "transfer took too long" not in log, node
    assert not control.running(state_dir)
    assert {r["state"] for r in rows(env, name).values()} == {"stopped"}
    provider.down(name, purge=True, state_root=env.state_root)
    assert not state_dir.exists()
    assert boot_s < UP_TIMEOUT


def test_proxy_node_units_and_flannel_config(env):
    hello = ("[Unit]\nDescription=hello\n\n[Service]\nEnvironmentFile=/etc/environment\n"
             "ExecStart=/bin/sh -c 'echo $COREOS_PUBLIC_IPV4; exec sleep 1000'\n")
    path, name = env.cluster("local.yaml", nodes={"count": 2, "name_prefix": "core"},
                             etcd={"members": ["core-01"], "discovery": {"mode": "static"}},
                             flannel={"config": {"Network": "10.1.0.0/16"}},
                             node_units=[{"name": "hello.service", "command": "start",
                                          "content": hello}])
    assert env.up(path) == 0
    nodes = rows(env, name)
    assert [nodes[n]["role"] for n in ("core-01", "core-02")] == ["etcd-member", "etcd-proxy"]
    for row in nodes.values():  # the proxy (an etcd gateway) stored the config too
        assert (row["etcd"], row["fleet"]) == ("healthy", "registered")
        assert row["units"] == {"flanneld.service": "active/exited",
                                "hello.service": "active/running"}
        with urllib.request.urlopen(f"https://{row['ip']}:2379/v2/keys/coreos.com/network/"
                                    "config", timeout=3,
                                    context=env.ssl_context(name)) as response:
            value = json.load(response)["node"]["value"]
        assert json.loads(value) == {"Network": "10.1.0.0/16"}
    row = nodes["core-02"]
    log = env.state_dir(name) / "nodes" / "core-02" / "system" / "logs" / "hello.service.log"
    wait_for(lambda: row["ip"] in log.read_text(), 5, message="hello printed the node IP")
    provider.down(name, state_root=env.state_root)
    assert survivors(env.state_dir(name)) == []


def test_custom_discovery_cluster_comes_up(env):
    path, name = env.cluster("custom-etcd.yaml", fleet=FAST_FLEET)
    assert env.up(path) == 0
    nodes = rows(env, name)
    assert nodes["core-01"]["role"] == "etcd-discovery"
    assert all(r["etcd"] == "healthy" and r["fleet"] == "registered" for r in nodes.values())
    assert etcd_members(f"https://{nodes['core-02']['ip']}:2379", env.ssl_context(name)) == 3
    manifest = json.loads((env.state_dir(name) / "rendered" / "manifest.json").read_text())
    with urllib.request.urlopen(manifest["etcd"]["discovery"]["size_key_url"],
                                timeout=3) as response:
        assert json.load(response)["node"]["value"] == "3"
    provider.down(name, purge=True, state_root=env.state_root)
    assert survivors(env.state_dir(name)) == []


def test_token_discovery_against_a_local_discovery_service(env):
    with LocalDiscoveryService(find_etcd().etcd) as service:
        path, name = env.cluster("local.yaml", etcd={"discovery": {
            "mode": "token", "service": service.url}}, fleet=FAST_FLEET)
        assert env.up(path) == 0
        record = json.loads((env.state_dir(name) / "rendered" / "discovery.json").read_text())
        assert record["url"].startswith(f"{service.etcd_url}/v2/keys/discovery/")
        with urllib.request.urlopen(record["url"], timeout=3) as response:
            registered = [n for n in json.load(response)["node"].get("nodes", [])
                          if not n["key"].endswith("_config")]
        assert len(registered) == 3
        nodes = rows(env, name)
        assert etcd_members(f"https://{nodes['core-03']['ip']}:2379",
                            env.ssl_context(name)) == 3
        provider.down(name, purge=True, state_root=env.state_root)
        assert survivors(env.state_dir(name)) == []


@pytest.mark.skipif(dns.requirements_problem() is not None,
                    reason=str(dns.requirements_problem()))
def test_dns_srv_cluster_in_its_own_network_namespace(env):
    path, name = env.cluster("dns-srv.yaml", provider="local", fleet=FAST_FLEET)
    data = yaml.safe_load(path.read_text())
    data["network"]["start"] = 1
    del data["etcd"]["discovery"]["dns_server"]
    path.write_text(yaml.safe_dump(data))
    netns = dns.namespace(name)
    assert env.up(path) == 0
    assert dns.exists(netns)
    nodes = rows(env, name)
    assert all(r["etcd"] == "healthy" and r["fleet"] == "registered" for r in nodes.values())
    members = subprocess.run(
        ["ip", "netns", "exec", netns, "curl", "-s", *env.curl_tls(name),
         f"https://{nodes['coreos-01']['ip']}:2379/v2/members"], capture_output=True,
        text=True, timeout=10).stdout
    peers = sorted(u for m in json.loads(members)["members"] for u in m["peerURLs"])
    assert peers == [f"https://coreos-0{i}.testdomain.com:2380" for i in (1, 2, 3)]
    assert "ip netns exec" in provider.env(name, state_root=env.state_root)
    provider.down(name, state_root=env.state_root)
    assert not dns.exists(netns)
    assert not (dns.NETNS_ETC / netns).exists()
    assert survivors(env.state_dir(name)) == []


def test_a_node_that_cannot_boot_fails_up_with_its_log_and_leaves_nothing(env):
    path, name = env.cluster("local.yaml")
    ip = f"{yaml.safe_load(path.read_text())['network']['cidr'].rsplit('.', 1)[0]}.2"
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((ip, 2379))
        squatter.listen()
        with pytest.raises(OperationFailed) as caught:
            env.up(path, timeout=30)
    text = str(caught.value)
    assert f"node core-02 ({ip}): etcd2.service failed" in text
    assert "address already in use" in text
    state_dir = env.state_dir(name)
    assert not control.running(state_dir)
    assert survivors(state_dir) == []


def test_a_killed_supervisor_takes_every_node_process_with_it(env):
    path, name = env.cluster("local.yaml", nodes={"count": 1, "name_prefix": "core"})
    assert env.up(path) == 0
    state_dir = env.state_dir(name)
    pids = list(rows(env, name)["core-01"]["pids"].values())
    assert len(pids) == 2 and all(state.pid_alive(pid) for pid in pids)
    os.kill(state.supervisor_pid(state_dir), signal.SIGKILL)
    wait_for(lambda: not survivors(state_dir), 15, message="node processes gone")
    assert env.up(path) == 0  # and the cluster comes back from its state
    provider.down(name, state_root=env.state_root)


def test_ctrl_c_during_up_leaves_nothing(env):
    # `up` is held inside its try block once its nodes have booted (reading a stdin nobody
    # writes), so the Ctrl-C surely comes while `up` runs, however fast the boot was. Ctrl-C
    # acts as in a terminal: a test run started in the background (nohup, a CI job) gives its
    # children SIGINT ignored, and Python then installs no handler for it.
    path, name = env.cluster("local.yaml")
    state_dir = env.state_dir(name)
    code = textwrap.dedent(f"""
        import signal
        import sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from provision.providers.local import provider
        booting = provider._boot
        def boot_then_hold(*args, **kwargs):
            booting(*args, **kwargs)
            print("booted", flush=True)
            sys.stdin.read()
        provider._boot = boot_then_hold
        sys.exit(provider.up({str(path)!r}, timeout=60, state_root={str(env.state_root)!r}))
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout.readline() == b"booted\n"
        assert control.running(state_dir) and survivors(state_dir)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    assert b"KeyboardInterrupt" in err
    assert not control.running(state_dir)
    assert survivors(state_dir) == []


def test_unknown_clusters_and_non_loopback_networks_are_user_errors(env):
    with pytest.raises(UserError, match="no local cluster named 'nope'"):
        provider.down("nope", state_root=env.state_root)
    path, _ = env.cluster("local.yaml")
    data = yaml.safe_load(path.read_text())
    data["network"]["cidr"] = "172.17.8.0/24"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"loopback addresses; use a 127\.x"):
        env.up(path)
