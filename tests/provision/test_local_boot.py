"""The local provider's boot plan: user-data text in, a node's plan out (no processes)."""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

import pytest
import yaml

from fleetd.config import SETTINGS
from fleetd.runner.process.settings import parse_service_config
from fleetd.runner.process.specifiers import SpecifierContext, expand_variables
from fleetd.unit.names import parse_unit_name
from fleetd.unit.unitfile import parse_unit_file
from provision.errors import UserError
from provision.providers.local import dns
from provision.providers.local.boot import NodeDirs, narrow_urls, plan_node
from provision.providers.local.etcdbin import parse_version, version_warning
from provision.providers.local.units import FLANNEL_NOTE, Tools, exec_line
from provision.render.discovery import resolve
from provision.render.manifest import (
    LxcSettings,
    Manifest,
    ManifestEtcd,
    ManifestNode,
    NodeVagrant,
    VagrantCluster,
)
from provision.render.pipeline import manifest as render_manifest
from provision.render.pipeline import render_cluster
from provision.spec.build import load_cluster
from provision.spec.discovery import DiscoveryRecord
from tests.conftest import cluster_pki

REPO = Path(__file__).resolve().parents[2]
TOOLS = Tools(etcd="/opt/etcd/etcd", etcdctl="/opt/etcd/etcdctl", python="/usr/bin/python3",
              pythonpath="/src")
FLEET = frozenset(SETTINGS)
IP = "127.9.0.2"
MANIFEST = Manifest(
    cluster="c", source="/c.yaml", provider="local", network="127.9.0.0/24",
    substituted=False, tls=False,
    etcd=ManifestEtcd(members=("core-01", "core-02"), client_port=2379, peer_port=2380,
                      endpoints=("http://127.9.0.1:2379", "http://127.9.0.2:2379"),
                      discovery=DiscoveryRecord("static", 2)),
    nodes=(), units=(), vagrant=VagrantCluster(None, "payload.tar", LxcSettings("br0", 24, None)))


def dirs(name: str = "core-02") -> NodeDirs:
    return NodeDirs(Path("/state/c/nodes") / name)


def node(role: str = "etcd-member", name: str = "core-02", ip: str = IP) -> ManifestNode:
    return ManifestNode(index=2, name=name, hostname=name, ip=ip, roles=(role, "fleet"),
                        user_data="user-data-2", metadata=(),
                        vagrant=NodeVagrant("box", None, None, 1, 1024, False, f"c-{name}"))


def user_data(etcd2: dict | None = None, fleet: dict | None = None, units: list | None = None,
              write_files: list | None = None, **extra) -> str:
    coreos: dict = {"etcd2": etcd2 if etcd2 is not None else {"name": "core-02"},
                    "fleet": fleet or {}, "units": units or []}
    coreos.update(extra)
    config: dict = {"hostname": "core-02", "coreos": coreos}
    if write_files is not None:
        config["write_files"] = write_files
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False)


def plan(text: str, role: str = "etcd-member", api_socket_flag: bool = False):
    return plan_node(text, source="user-data-2", node=node(role), manifest=MANIFEST,
                     dirs=dirs(), tools=TOOLS, fleet_settings=FLEET,
                     api_socket_flag=api_socket_flag)


def flags(argv) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)


# -- substitution and listeners --------------------------------------------------------------

@pytest.mark.parametrize(("given", "expected"), [
    ("http://0.0.0.0:2379", f"http://{IP}:2379"),
    ("http://localhost:2379,http://127.0.0.1:4001", f"http://{IP}:2379,http://{IP}:4001"),
    ("http://[::]:2379", f"http://{IP}:2379"),
    ("http://0.0.0.0:2379,http://127.9.0.2:2379", f"http://{IP}:2379"),
    ("http://10.0.0.5:2379", "http://10.0.0.5:2379"),
], ids=["any-address", "loopback-names", "ipv6-any", "deduplicated", "other-host-kept"])
def test_listeners_are_narrowed_to_the_node_ip(given, expected):
    assert narrow_urls(given, IP) == expected


def test_ip_variables_are_substituted_everywhere():
    text = user_data({"name": "core-02", "advertise-client-urls": "http://$public_ipv4:2379"},
                     {"public-ip": "$public_ipv4", "etcd-servers": "http://$private_ipv4:2379"},
                     write_files=[{"path": "/etc/environment",
                                   "content": "A=$private_ipv4\nB=$public_ipv4\n"}])
    boot = plan(text)
    assert flags(boot.etcd_argv)["advertise-client-urls"] == f"http://{IP}:2379"
    assert boot.fleet_etcd_servers == (f"http://{IP}:2379",)
    assert boot.files[0].content == f"A={IP}\nB={IP}\n".encode()
    assert "$" not in " ".join(boot.fleetd_argv)


def test_escaped_ip_variables_stay_literal_as_coreos_cloudinit_keeps_them():
    text = user_data({"name": "core-02"}, {"public-ip": "$public_ipv4"},
                     write_files=[{"path": "/etc/motd",
                                   "content": "ip $private_ipv4, say \\$private_ipv4\n"}])
    boot = plan(text)
    assert boot.files[0].content == f"ip {IP}, say $private_ipv4\n".encode()


# -- etcd -----------------------------------------------------------------------------------------

ETCD_ROWS = [
    pytest.param(
        "etcd-member",
        {"name": "core-02", "listen-client-urls": "http://0.0.0.0:2379",
         "listen-peer-urls": "http://$private_ipv4:2380",
         "initial-advertise-peer-urls": "http://$private_ipv4:2380",
         "advertise-client-urls": "http://$public_ipv4:2379",
         "initial-cluster": "core-01=http://127.9.0.1:2380,core-02=http://127.9.0.2:2380",
         "initial-cluster-token": "t", "initial-cluster-state": "new"},
        {"listen-client-urls": f"http://{IP}:2379", "listen-peer-urls": f"http://{IP}:2380",
         "initial-cluster": "core-01=http://127.9.0.1:2380,core-02=http://127.9.0.2:2380",
         "initial-cluster-state": "new", "enable-v2": "true",
         "data-dir": "/state/c/nodes/core-02/etcd"},
        [], id="static-member"),
    pytest.param(
        "etcd-member",
        {"name": "core-02", "listen-client-urls": "http://0.0.0.0:2379",
         "discovery": "http://127.9.0.1:2379/v2/keys/discovery/abc"},
        {"discovery": "http://127.9.0.1:2379/v2/keys/discovery/abc",
         "listen-peer-urls": f"http://{IP}:2380", "enable-v2": "true"},
        ["initial-cluster"], id="discovery-member-has-no-initial-cluster"),
    pytest.param(
        "etcd-discovery",
        {"name": "core-02", "advertise-client-urls": "http://$public_ipv4:2379",
         "listen-client-urls": "http://0.0.0.0:2379"},
        {"initial-cluster": f"core-02=http://{IP}:2380", "listen-peer-urls": f"http://{IP}:2380",
         "initial-advertise-peer-urls": f"http://{IP}:2380", "enable-v2": "true",
         "listen-client-urls": f"http://{IP}:2379"},
        ["discovery"], id="custom-discovery-node-standalone"),
    pytest.param(
        "etcd-member",
        {"name": "core-02", "data-dir": "/var/lib/etcd2", "heartbeat-interval": 100,
         "strict-reconfig-check": True, "ca-file": "/etc/ca.pem", "peer-election-magic": 3},
        {"data-dir": "/state/c/nodes/core-02/etcd", "heartbeat-interval": "100",
         # a file the node's etcd reads is a node path: found under the node root here
         "strict-reconfig-check": "true",
         "trusted-ca-file": "/state/c/nodes/core-02/root/etc/ca.pem"},
        ["peer-election-magic", "ca-file"], id="settings-passed-renamed-or-dropped"),
]


@pytest.mark.parametrize(("role", "etcd2", "expected", "absent"), ETCD_ROWS)
def test_etcd2_section_becomes_etcd_35_flags(role, etcd2, expected, absent):
    boot = plan(user_data(etcd2), role=role)
    got = flags(boot.etcd_argv)
    assert boot.etcd_argv[0] == TOOLS.etcd
    assert {k: got.get(k) for k in expected} == expected
    for key in absent:
        assert key not in got
    assert boot.etcd_url == f"http://{IP}:2379"


@pytest.mark.parametrize("url", [
    "http://127.9.0.1:2379/v2/keys/discovery/4d2d00d76f3b473fa5d670ade0a40212",
    "https://discovery.example/with%percent/and$dollar",
], ids=["token", "specials"])
def test_the_discovery_url_reaches_etcd_through_its_environment_not_its_command_line(url):
    """`ps` shows every local user a command line; the environment is etcd's own."""
    boot = plan(user_data({"name": "core-02", "discovery": url}))
    assert flags(boot.etcd_argv)["discovery"] == url  # the plan itself still knows it
    unit = parse_unit_file(unit_texts(boot)["etcd2.service"])
    config = parse_service_config(unit, parse_unit_name("etcd2.service"),
                                  SpecifierContext(machine_id="m", hostname="h"))
    words = expand_variables(config.exec_start[0].words, {})
    assert not [w for w in words if url in w or w.startswith("--discovery")]
    assert dict(config.environment)["ETCD_DISCOVERY"] == url


def test_dropped_and_replaced_etcd_settings_are_noted():
    boot = plan(user_data({"name": "core-02", "data-dir": "/var/lib/etcd2", "bogus-key": 1}))
    assert "etcd2 `data-dir` is replaced by the node directory" in boot.notes
    assert "etcd2 `bogus-key` has no etcd 3.5 flag; left out" in boot.notes


@pytest.mark.parametrize("proxy", ["on", True, "readonly"], ids=["on", "yaml-bool", "readonly"])
def test_proxy_node_runs_an_etcd_gateway_to_the_members(proxy):
    text = user_data({"name": "core-02", "proxy": proxy,
                      "listen-client-urls": "http://0.0.0.0:2379",
                      "initial-cluster": "core-01=http://127.9.0.1:2380"})
    boot = plan(text, role="etcd-proxy")
    assert boot.etcd_argv == (TOOLS.etcd, "gateway", "start", "--listen-addr", f"{IP}:2379",
                              "--endpoints", "127.9.0.1:2379,127.9.0.2:2379",
                              "--retry-delay", "1s")
    assert boot.etcd_url == f"http://{IP}:2379"


# -- fleet ----------------------------------------------------------------------------------------

FLEET_ROWS = [
    pytest.param({"public-ip": "$public_ipv4", "metadata": "region=local",
                  "etcd-servers": "http://$private_ipv4:2379", "agent-ttl": "5s",
                  "engine-reconcile-interval": 1}, False,
                 {"--public-ip": IP, "--metadata": "region=local", "--agent-ttl": "5s",
                  "--engine-reconcile-interval": "1", "--verbosity": "1"}, [], id="example"),
    pytest.param({"verbosity": 2, "etcd-key-prefix": "/x/"}, False,
                 {"--verbosity": "2", "--etcd-key-prefix": "/x/"}, [], id="own-verbosity"),
    pytest.param({"state-dir": "/var/lib/fleet", "frobnicate": "yes"}, False, {},
                 ["fleet `state-dir` is replaced by the node directory",
                  "fleet `frobnicate` is not a fleetd setting; left out"], id="dropped"),
    pytest.param({}, True, {"--api-socket": "/state/c/nodes/core-02/fleet/fleet.sock"}, [],
                 id="api-socket"),
]


@pytest.mark.parametrize(("fleet", "api_flag", "expected", "notes"), FLEET_ROWS)
def test_fleet_section_becomes_fleetd_flags(fleet, api_flag, expected, notes):
    boot = plan(user_data(fleet=fleet), api_socket_flag=api_flag)
    argv = list(boot.fleetd_argv)
    assert argv[:3] == [TOOLS.python, "-m", "fleetd.cli"]
    pairs = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert pairs["--state-dir"] == "/state/c/nodes/core-02/fleet"
    assert pairs["--root-dir"] == "/state/c/nodes/core-02/root"
    assert {k: pairs.get(k) for k in expected} == expected
    assert pairs.get("--state-dir") != "/var/lib/fleet"
    for note in notes:
        assert note in boot.notes
    assert boot.api_socket == "/state/c/nodes/core-02/fleet/fleet.sock"


# -- write_files ----------------------------------------------------------------------------------

FILE_ROWS = [
    pytest.param({"path": "/etc/a", "content": "x"}, "/etc/a", b"x", 0o644, id="default-mode"),
    pytest.param({"path": "/etc/a", "content": "x", "permissions": "0600"}, "/etc/a", b"x",
                 0o600, id="octal-string"),
    pytest.param({"path": "/etc/a", "content": "x", "permissions": 0o755}, "/etc/a", b"x",
                 0o755, id="yaml-octal-int"),
    pytest.param({"path": "/opt//bin/./tool", "content": "x"}, "/opt/bin/tool", b"x", 0o644,
                 id="normalised-path"),
    pytest.param({"path": "/etc/b", "encoding": "b64",
                  "content": base64.b64encode(b"\x00bin").decode()}, "/etc/b", b"\x00bin",
                 0o644, id="base64"),
    pytest.param({"path": "/etc/c", "encoding": "gz+b64",
                  "content": base64.b64encode(gzip.compress(b"zipped")).decode()}, "/etc/c",
                 b"zipped", 0o644, id="gzip-base64"),
]


@pytest.mark.parametrize(("entry", "path", "content", "mode"), FILE_ROWS)
def test_write_files_are_planned_with_their_modes(entry, path, content, mode):
    boot = plan(user_data(write_files=[entry]))
    assert [(f.path, f.content, f.mode) for f in boot.files] == [(path, content, mode)]


BAD_FILE_ROWS = [
    pytest.param({"path": "/../../etc/passwd", "content": "x"}, "contains `..`",
                 id="escapes-root"),
    pytest.param({"path": "/etc/../../x", "content": "x"}, "contains `..`", id="escapes-later"),
    pytest.param({"path": "etc/relative", "content": "x"}, "is not absolute", id="relative"),
    pytest.param({"path": "/etc/a", "permissions": "rw-r--r--"}, "not an octal mode",
                 id="bad-mode"),
    pytest.param({"path": "/etc/a", "encoding": "rot13", "content": "x"}, "unknown encoding",
                 id="bad-encoding"),
    pytest.param({"path": "/etc/a", "encoding": "gzip", "content": "not gzip"},
                 "not valid gzip", id="bad-gzip"),
]


@pytest.mark.parametrize(("entry", "message"), BAD_FILE_ROWS)
def test_bad_write_files_are_refused_naming_the_file(entry, message):
    with pytest.raises(UserError) as caught:
        plan(user_data(write_files=[entry]))
    text = str(caught.value)
    assert text.startswith("user-data-2: write_files[0]")
    assert message in text


# -- units ----------------------------------------------------------------------------------------

WEB = "[Unit]\nDescription=web\n\n[Service]\nExecStart=/bin/sleep 100\n"


def unit_texts(boot) -> dict[str, str]:
    return {u.name: u.text for u in boot.units}


def test_etcd_and_fleet_units_come_first_and_fleet_stops_before_etcd():
    boot = plan(user_data(units=[{"name": "etcd2.service", "command": "start"},
                                 {"name": "fleet.service", "command": "start"}]))
    assert [u.name for u in boot.units] == ["etcd2.service", "fleet.service"]
    assert boot.started_units == ("etcd2.service", "fleet.service")
    fleet = parse_unit_file(unit_texts(boot)["fleet.service"])
    assert fleet.get("Unit", "After") == ["etcd2.service"]  # so it stops first
    assert fleet.get("Service", "Environment") == ["PYTHONPATH=/src"]


def test_node_unit_content_and_drop_ins_are_merged_in_name_order():
    units = [{"name": "web.service", "command": "start", "content": WEB, "drop-ins": [
        {"name": "20-b.conf", "content": "[Service]\nEnvironment=B=2\n"},
        {"name": "10-a.conf", "content": "[Service]\nEnvironment=A=1\n"}]}]
    boot = plan(user_data(units=units))
    web = parse_unit_file(unit_texts(boot)["web.service"])
    assert web.get("Service", "Environment") == ["A=1", "B=2"]
    assert web.get("Service", "ExecStart") == ["/bin/sleep 100"]
    assert boot.node_units == ("web.service",)


UNIT_ROWS = [
    pytest.param({"name": "web.service", "content": WEB}, False, None, id="loaded-not-started"),
    pytest.param({"name": "web.service", "command": "restart", "content": WEB}, True, None,
                 id="restart-starts"),
    pytest.param({"name": "web.service", "command": "start", "content": WEB, "mask": True},
                 None, "web.service is masked; not run", id="masked"),
    pytest.param({"name": "docker.service", "command": "start",
                  "drop-ins": [{"name": "x.conf", "content": "[Service]\nEnvironment=A=1\n"}]},
                 None, "docker.service: no unit file in the user-data and no stock units on a "
                       "local node; not run", id="stock-unit-without-content"),
    pytest.param({"name": "etcd2.service", "command": "start",
                  "drop-ins": [{"name": "x.conf", "content": "[Service]\nEnvironment=A=1\n"}]},
                 None, "etcd2.service: its content and drop-ins are not applied locally; the "
                       "node runs its own from the etcd2/fleet sections", id="etcd-drop-in"),
]


@pytest.mark.parametrize(("entry", "started", "note"), UNIT_ROWS)
def test_node_units_by_command(entry, started, note):
    boot = plan(user_data(units=[entry]))
    by_name = {u.name: u for u in boot.units}
    if started is None:
        assert entry["name"] not in by_name or entry["name"] == "etcd2.service"
    else:
        assert by_name[entry["name"]].start is started
    if note:
        assert note in boot.notes


def test_flanneld_runs_only_its_network_config_through_our_etcdctl():
    drop_in = ("[Service]\nExecStartPre=/usr/bin/etcdctl set /coreos.com/network/config "
               "'{\"Network\": \"10.1.0.0/16\"}'\n")
    units = [{"name": "flanneld.service", "command": "start",
              "drop-ins": [{"name": "50-network-config.conf", "content": drop_in}]}]
    boot = plan(user_data(units=units, flannel={"interface": "$public_ipv4"}))
    flannel = parse_unit_file(unit_texts(boot)["flanneld.service"])
    assert flannel.get("Service", "Type") == ["oneshot"]
    assert flannel.get("Service", "Restart") == ["on-failure"]  # until etcd answers
    config = parse_service_config(flannel, parse_unit_name("flanneld.service"),
                                  SpecifierContext(machine_id="m", hostname="h"))
    assert config.exec_start[0].words == (
        "/opt/etcd/etcdctl", "set", "/coreos.com/network/config", '{"Network": "10.1.0.0/16"}')
    assert boot.notes.count(FLANNEL_NOTE) == 1
    assert dict(boot.env) == {"ETCDCTL_API": "2", "ETCDCTL_ENDPOINTS": f"http://{IP}:2379",
                              "ETCDCTL_PEERS": f"http://{IP}:2379"}


def test_a_broken_unit_is_a_user_error_naming_the_unit():
    units = [{"name": "web.service", "command": "start", "content": "[Service\nExecStart=x\n"}]
    with pytest.raises(UserError, match=r"user-data-2: unit web.service: line 1"):
        plan(user_data(units=units))


@pytest.mark.parametrize("text", ["#cloud-config\nhostname: [unclosed\n", "#cloud-config\n{}\n",
                                  "#cloud-config\ncoreos: {fleet: {}}\n"],
                         ids=["bad-yaml", "no-coreos", "no-etcd2"])
def test_unbootable_user_data_is_a_user_error(text):
    with pytest.raises(UserError, match=r"^user-data-2: "):
        plan(text)


@pytest.mark.parametrize("argv", [
    ["/usr/bin/etcd", "--name=a"],
    ["/path with space/bin", "--x=a b"],
    ["/bin/echo", "100%", "$HOME", 'say "hi"', "back\\slash", "semi;colon", "it's"],
], ids=["plain", "spaces", "specials"])
def test_exec_lines_round_trip_through_the_unit_reader(argv):
    unit = parse_unit_file(f"[Service]\nExecStart={exec_line(argv)}\n")
    config = parse_service_config(unit, parse_unit_name("x.service"),
                                  SpecifierContext(machine_id="m", hostname="h"))
    assert expand_variables(config.exec_start[0].words, {"HOME": "/root"}) == argv


# -- whole rendered clusters ----------------------------------------------------------------------

def rendered(example: str, tmp_path: Path) -> tuple[Manifest, dict[str, str]]:
    cluster, _ = load_cluster(str(REPO / "clusters" / example))
    disc, _ = resolve(cluster, tmp_path, fetch=lambda url, timeout: "unused")
    files = {f.name: f.text for f in render_cluster(cluster, disc, pki=cluster_pki(cluster))}
    return render_manifest(cluster, disc, False), files


@pytest.mark.parametrize(("example", "roles"), [
    ("local.yaml", {"etcd-member": 3}),
    ("custom-etcd.yaml", {"etcd-discovery": 1, "etcd-member": 3}),
    ("large.yaml", {"etcd-member": 3, "etcd-proxy": 7}),
    ("vagrant.yaml", None),
    ("dns-srv.yaml", None),
], ids=["local", "custom", "large-with-proxies", "vagrant-flannel", "dns-srv"])
def test_every_example_plans_from_its_rendered_user_data(example, roles, tmp_path):
    manifest, files = rendered(example, tmp_path)
    boots = [plan_node(files[n.user_data], source=n.user_data, node=n, manifest=manifest,
                       dirs=dirs(n.name), tools=TOOLS, fleet_settings=FLEET)
             for n in manifest.nodes]
    if roles is not None:
        counted: dict[str, int] = {}
        for boot in boots:
            counted[boot.role] = counted.get(boot.role, 0) + 1
        assert counted == roles
    for boot, spec in zip(boots, manifest.nodes, strict=True):
        argv = " ".join(boot.etcd_argv)
        assert "0.0.0.0" not in argv and "$" not in argv
        assert f"{spec.ip}:{manifest.etcd.client_port}" in argv
        assert boot.started_units[:2] == ("etcd2.service", "fleet.service")
        if boot.role != "etcd-proxy":
            assert "--enable-v2=true" in boot.etcd_argv


def test_etcd_drop_ins_in_write_files_set_flags_the_etcd2_section_cannot_name(tmp_path):
    """The rendered revocation list reaches a member's etcd (under the node root); a proxy's
    gateway, which passes TLS through, does not take it."""
    manifest, files = rendered("large.yaml", tmp_path)
    by_role = {}
    for spec in manifest.nodes:
        boot = plan_node(files[spec.user_data], source=spec.user_data, node=spec,
                         manifest=manifest, dirs=dirs(spec.name), tools=TOOLS,
                         fleet_settings=FLEET)
        by_role.setdefault(boot.role, boot)
    member = flags(by_role["etcd-member"].etcd_argv)
    crl = str(dirs(by_role["etcd-member"].name).root / "etc/ssl/etcd/crl.pem")
    assert member["client-crl-file"] == member["peer-crl-file"] == crl
    assert "crl" not in " ".join(by_role["etcd-proxy"].etcd_argv)
    drop_in = {"path": "/etc/systemd/system/etcd2.service.d/40-more.conf",
               "content": '[Service]\nEnvironment="ETCD_SNAPSHOT_COUNT=500" ETCD_BOGUS=1\n'
                          "Environment=OTHER=2\n"}
    got = flags(plan(user_data({"name": "core-02", "snapshot-count": 100},
                               write_files=[drop_in])).etcd_argv)
    assert got["snapshot-count"] == "500" and "bogus" not in got


@pytest.mark.parametrize(("text", "version", "warns"), [
    ("etcd Version: 3.5.1\nGit SHA: e8732fb5f\n", (3, 5, 1), True),
    ("etcd Version: 3.5.5\n", (3, 5, 5), True),
    ("etcd Version: 3.5.6\n", (3, 5, 6), False),
    ("etcd Version: 3.4.22\n", (3, 4, 22), False),
    ("something else", None, False),
], ids=["3.5.1", "3.5.5", "3.5.6", "3.4.22", "unparsable"])
def test_etcd_versions_with_the_13766_data_loss_bug_warn(text, version, warns):
    assert parse_version(text) == version
    warning = version_warning(version)
    assert (warning is not None) is warns
    if warns:
        assert "#13766" in warning and "3.5.6" in warning


# -- dns-srv: the rendered zone served by dnsmasq -------------------------------------------------

def test_the_rendered_zone_becomes_dnsmasq_records(tmp_path):
    data = yaml.safe_load((REPO / "clusters" / "dns-srv.yaml").read_text())
    data["network"] = {"cidr": "127.86.0.0/24", "start": 1}
    data["provider"] = "local"
    del data["etcd"]["discovery"]["dns_server"]
    path = tmp_path / "dns.yaml"
    path.write_text(yaml.safe_dump(data))
    cluster, _ = load_cluster(str(path))
    zone = next(f.text for f in render_cluster(cluster, resolve(cluster, tmp_path)[0],
                                                   pki=cluster_pki(cluster))
                if f.name == "etcd-srv.zone")
    records = dns.zone_records(zone)
    assert records.srv[0] == ("_etcd-server-ssl._tcp.testdomain.com", "coreos-01.testdomain.com",
                              2380, 0, 0)
    assert len(records.srv) == 6 and len(records.a) == 3
    argv = dns.dnsmasq_argv("/usr/sbin/dnsmasq", "127.86.0.254", "testdomain.com", records,
                            "/s/dnsmasq.pid")
    assert "--listen-address=127.86.0.254" in argv
    assert "--local=/testdomain.com/" in argv  # nothing else is answered or forwarded
    assert "--srv-host=_etcd-client-ssl._tcp.testdomain.com,coreos-02.testdomain.com,2379,0,0" \
        in argv
    assert "--host-record=coreos-03.testdomain.com,127.86.0.3" in argv


@pytest.mark.parametrize(("wanted", "taken", "expected"), [
    (None, {"127.86.0.1"}, "127.86.0.254"),
    ("127.86.0.53", {"127.86.0.1"}, "127.86.0.53"),
    ("172.17.8.111", set(), "127.86.0.254"),
    ("127.86.0.1", {"127.86.0.1"}, "127.86.0.254"),
    (None, {"127.86.0.254"}, "127.86.0.253"),
], ids=["default-last-host", "rendered-in-network", "rendered-elsewhere", "rendered-taken",
        "last-host-taken"])
def test_the_dns_server_address(wanted, taken, expected):
    assert dns.dns_address("127.86.0.0/24", taken, wanted) == expected
