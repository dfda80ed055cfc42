"""The user-data applier's pure parts, by tables: address substitution and sources, the
user-data read as a MachineConfig (and what refuses it), the stock etcd2/fleet/flanneld
units, and the planner (machine state + config -> actions)."""

from __future__ import annotations

import base64
import gzip
import textwrap
from importlib import resources

import pytest

from fleetd.unit.unitfile import parse_unit_file
from provision.errors import Problem, UserError
from provision.machine.addresses import machine_addresses, parse_environment_file
from provision.machine.config import blocks_apply, parse_machine_config
from provision.machine.model import (
    Account,
    CreateUser,
    EnableUnit,
    Facts,
    FileState,
    MachineState,
    MakeDirectory,
    Mask,
    Reload,
    SetAttributes,
    SetHostname,
    SetPassword,
    UnitCommand,
    UnitState,
    Unmask,
    WriteFile,
)
from provision.machine.planner import (
    KEYS_BEGIN,
    KEYS_END,
    authorized_keys,
    command_to_run,
    owner_ids,
    plan,
    unit_of_path,
)
from provision.machine.seed import ENVIRONMENT_FILE, USER_DATA, seed_files
from provision.machine.services import (
    NO_FLANNELD,
    environment_line,
    etcd2_variables,
    flannel_variables,
    fleet_variables,
)
from provision.userdata.substitution import substitute, variables_used

FACTS = Facts(etcd="/usr/bin/etcd", etcd_user="etcd", etcdctl="/usr/bin/etcdctl",
              fleetd=("/usr/local/bin/fleetd",), flanneld=None, sudo=True)
IP = {"private_ipv4": "172.17.8.101", "public_ipv4": "172.17.8.101"}


def config(text: str, addresses: dict | None = None, facts: Facts = FACTS):
    return parse_machine_config("#cloud-config\n" + textwrap.dedent(text), "ud",
                                IP if addresses is None else addresses, facts)


def refused(text: str, addresses: dict | None = None) -> list[str]:
    with pytest.raises(UserError) as caught:
        config(text, addresses)
    return [str(p) for p in caught.value.problems]


# -- address variables -----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    pytest.param("http://$private_ipv4:2379", "http://10.0.0.1:2379", id="plain"),
    pytest.param("$public_ipv4,$private_ipv4", "10.0.0.2,10.0.0.1", id="both"),
    pytest.param("$private_ipv4$private_ipv4", "10.0.0.1$private_ipv4",
                 id="adjacent-only-the-first-as-coreos-cloudinit"),
    pytest.param(r"echo \$private_ipv4", "echo $private_ipv4", id="escaped-stays"),
    pytest.param(r"\$public_ipv4 and $public_ipv4", "$public_ipv4 and 10.0.0.2",
                 id="escaped-and-plain"),
    pytest.param("$private_ipv6", "$private_ipv6", id="no-value-left-alone"),
    pytest.param("$private_ipv4x", "10.0.0.1x", id="no-word-boundary-like-coreos"),
])
def test_substitution_replaces_unescaped_variables(text, expected):
    assert substitute(text, {"private_ipv4": "10.0.0.1", "public_ipv4": "10.0.0.2"}) == expected


def test_variables_used_ignores_escaped_ones():
    assert variables_used(r"$public_ipv4 \$private_ipv4 $public_ipv4") == ["public_ipv4"]


@pytest.mark.parametrize("flags, environ, file, expected", [
    pytest.param({"private_ipv4": "10.0.0.1"}, {"COREOS_PRIVATE_IPV4": "10.9.9.9"}, {},
                 {"private_ipv4": "10.0.0.1", "public_ipv4": "10.0.0.1"}, id="flag-wins"),
    pytest.param({}, {"COREOS_PRIVATE_IPV4": "10.0.0.5"}, {"COREOS_PRIVATE_IPV4": "10.9.9.9"},
                 {"private_ipv4": "10.0.0.5", "public_ipv4": "10.0.0.5"}, id="env-over-file"),
    pytest.param({}, {}, {"COREOS_PUBLIC_IPV4": "192.0.2.7",
                          "COREOS_PRIVATE_IPV4": "10.0.0.7"},
                 {"private_ipv4": "10.0.0.7", "public_ipv4": "192.0.2.7"}, id="file-both"),
    pytest.param({"public_ipv4": "192.0.2.1"}, {}, {},
                 {"private_ipv4": "192.0.2.1", "public_ipv4": "192.0.2.1"},
                 id="one-stands-for-both"),
    pytest.param({}, {}, {}, {}, id="none"),
])
def test_machine_addresses_first_source_wins(flags, environ, file, expected):
    assert machine_addresses(flags, environ, file) == expected


@pytest.mark.parametrize("flags, message", [
    pytest.param({"private_ipv4": "core-01"}, "--private-ipv4: 'core-01' is not an IP address",
                 id="not-an-address"),
    pytest.param({"public_ipv4": "::1"}, "--public-ipv4: ::1 is not an IPv4 address",
                 id="wrong-family"),
])
def test_machine_addresses_refuse_what_is_no_address(flags, message):
    with pytest.raises(UserError, match=message):
        machine_addresses(flags, {}, {})


def test_environment_file_reads_coreos_vagrant_style_lines():
    text = ('# written by provision\nCOREOS_PUBLIC_IPV4=172.17.8.101\n'
            'export COREOS_PRIVATE_IPV4="172.17.8.102"\nnot a line\n\nA_B=\'x y\'\n')
    assert parse_environment_file(text) == {"COREOS_PUBLIC_IPV4": "172.17.8.101",
                                            "COREOS_PRIVATE_IPV4": "172.17.8.102",
                                            "A_B": "x y"}


# -- the user-data as a config ---------------------------------------------------------------

EVERYTHING = """\
hostname: node-1
manage_etc_hosts: localhost
ssh_authorized_keys: ["ssh-ed25519 AAAA core@x"]
users:
  - name: alice
    groups: [sudo]
    shell: /bin/sh
    ssh-authorized-keys: ["ssh-ed25519 BBBB alice@x"]
write_files:
  - path: /etc/plain
    content: "at $private_ipv4\\n"
  - path: /etc/b64
    encoding: b64
    content: {b64}
    permissions: "0600"
    owner: alice:alice
  - path: /etc/./gz
    encoding: gzip+base64
    content: {gz}
coreos:
  units:
    - name: web.service
      command: start
      enable: true
      content: |
        [Service]
        ExecStart=/bin/sleep 1000
        [Install]
        WantedBy=multi-user.target
      drop-ins:
        - {{name: 10-env.conf, content: "[Service]\\nEnvironment=A=1\\n"}}
    - {{name: run.service, runtime: true, content: "[Service]\\nExecStart=/bin/true\\n"}}
    - {{name: ugly.service, mask: true}}
"""


def everything() -> str:
    return EVERYTHING.format(b64=base64.b64encode(b"secret\n").decode(),
                             gz=base64.b64encode(gzip.compress(b"zipped\n")).decode())


def test_every_section_becomes_part_of_the_config():
    got = config(everything())
    assert got.hostname == "node-1" and got.manage_etc_hosts
    files = {f.path: f for f in got.files}
    assert files["/etc/hostname"].content == b"node-1\n"
    assert files["/etc/plain"].content == b"at 172.17.8.101\n"
    assert (files["/etc/b64"].content, files["/etc/b64"].mode, files["/etc/b64"].owner) == \
        (b"secret\n", 0o600, "alice:alice")
    assert files["/etc/gz"].content == b"zipped\n"  # the path normalised
    users = {u.name: u for u in got.users}
    assert users["core"].ssh_authorized_keys == ("ssh-ed25519 AAAA core@x",)
    assert users["core"].sudo and not users["alice"].sudo
    assert (users["alice"].groups, users["alice"].shell) == (("sudo",), "/bin/sh")
    units = {u.name: u for u in got.units}
    assert [f.path for f in units["web.service"].files] == [
        "/etc/systemd/system/web.service", "/etc/systemd/system/web.service.d/10-env.conf"]
    assert (units["web.service"].command, units["web.service"].enable) == ("start", True)
    assert [f.path for f in units["run.service"].files] == ["/run/systemd/system/run.service"]
    assert units["ugly.service"].mask and units["ugly.service"].files == ()


@pytest.mark.parametrize("text, expected", [
    pytest.param("coreos:\n  units:\n    - {name: a.service, command: launch}\n",
                 'ud:4:34: invalid value launch for "command" (want one of: start, '
                 "stop, restart, reload, try-restart, reload-or-restart, "
                 "reload-or-try-restart)", id="unknown-command"),
    pytest.param("coreos:\n  units:\n    - {name: a.service, enable: yes please}\n",
                 'ud:4:25: incorrect type for "enable" (want bool): got a string',
                 id="wrong-type"),
    pytest.param("write_files:\n  - {path: etc/a}\n", 'ud:3:12: write_files path "etc/a" is '
                 'relative: coreos-cloudinit writes it as "/etc/a"; write the absolute path',
                 id="relative-path"),
    pytest.param("coreos:\n  units:\n    - {name: ../x.service}\n",
                 "ud:4:14: invalid unit name '../x.service'", id="bad-unit-name"),
    pytest.param("coreos:\n  units:\n    - name: a.service\n      drop-ins: "
                 "[{name: ../../evil}]\n",
                 'ud:5:25: drop-in name "../../evil" must be a file name ending in ".conf"',
                 id="bad-drop-in-name"),
    pytest.param("write_files:\n  - {path: /etc/../root/x}\n",
                 'ud:3:12: write_files path "/etc/../root/x" contains ".."', id="dotdot"),
    pytest.param("write_files:\n  - {path: /etc/a, encoding: b64, content: '!!!'}\n",
                 'ud:3:44: content cannot be decoded as "b64"', id="bad-base64"),
    pytest.param("coreos:\n  units:\n    - {name: a.service, mask: true, command: start}\n",
                 'ud:4:46: a.service is masked (mask: true) and cannot "start"',
                 id="masked-and-started"),
    pytest.param("coreos:\n  units:\n    - {name: web@.service, command: start}\n",
                 "ud:4:37: web@.service is a template", id="template-started"),
    pytest.param("hostname: not_a host\n", 'ud:2:11: hostname "not_a host" is not a valid',
                 id="bad-hostname"),
    pytest.param("users:\n  - {name: Bob}\n", 'ud:3:12: user name "Bob" is not valid',
                 id="bad-user-name"),
    pytest.param("coreos:\n  units:\n    - {name: a.service}\n    - {name: a.service}\n",
                 'ud:5:7: unit "a.service" is listed twice', id="unit-twice"),
    pytest.param("write_files:\n  - {path: /etc/a, owner: 'a b'}\n",
                 'ud:3:27: owner "a b" is not user, user:group', id="bad-owner"),
])
def test_what_the_machine_cannot_apply_refuses_the_file(text, expected):
    problems = refused(text)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize("written, mode", [("0644", 0o644), ("'0600'", 0o600), ("755", 0o755),
                                           ("0640", 0o640)])
def test_string_fields_are_read_as_written_like_coreos_cloudinit(written, mode):
    # Go's structs get the scalar's text: unquoted 0644 is "0644", not YAML 1.1's 420.
    got = config(f"write_files:\n  - {{path: /etc/a, permissions: {written}, content: 0644}}\n")
    (spec,) = [f for f in got.files if f.path == "/etc/a"]
    assert (spec.mode, spec.content) == (mode, b"0644")


def test_an_address_variable_without_an_address_is_refused_where_it_is_used():
    problems = refused("hostname: a\nwrite_files:\n  - {path: /etc/x, content: "
                       "\"$public_ipv4\"}\n", addresses={})
    assert problems == ["ud:4:30: $public_ipv4 is used but this machine's address is unknown: "
                        "give --public-ipv4 or set COREOS_PUBLIC_IPV4 (in the environment or "
                        "/etc/environment)"]


def test_a_script_is_refused():
    with pytest.raises(UserError, match='ud:1:1: starts with "#!"'):
        parse_machine_config("#!/bin/sh\necho hi\n", "ud", IP, FACTS)


def test_every_problem_is_reported_at_once():
    problems = refused("coreos:\n  units:\n    - {name: a.service, command: launch}\n"
                       "write_files:\n  - {path: etc/a}\n")
    assert len(problems) == 2


@pytest.mark.parametrize("problem, blocks", [
    pytest.param(Problem("u", 1, 1, 'unrecognized key "colour"', "warning"), False,
                 id="unknown-key"),
    pytest.param(Problem("u", 1, 1, 'deprecated key "coreos_ssh_import_url" (…)', "warning"),
                 False, id="deprecated"),
    pytest.param(Problem("u", 1, 1, 'incorrect type for "content" (want string): the value '
                         "is empty", "warning"), False, id="empty-value"),
    pytest.param(Problem("u", 1, 1, 'incorrect type for "enable" (want bool): got string',
                         "warning"), True, id="wrong-type"),
    pytest.param(Problem("u", 1, 1, "invalid value x", "warning"), True, id="invalid-value"),
    pytest.param(Problem("u", 1, 1, "anything", "error"), True, id="error"),
])
def test_which_validator_findings_refuse_the_file(problem, blocks):
    assert blocks_apply(problem) is blocks


def test_tolerated_findings_and_unapplied_sections_become_notes():
    got = config("hostname: a\ncolour: blue\ncoreos:\n  update: {reboot-strategy: 'off'}\n"
                 "write_files:\n  - {path: /etc/empty, content: }\n")
    assert any('unrecognized key "colour"' in n for n in got.notes)
    assert "coreos.update is not applied on this machine (no update engine)" in got.notes
    assert {f.path: f.content for f in got.files}["/etc/empty"] == b""


# -- etcd2, fleet, flanneld ------------------------------------------------------------------

def test_etcd2_section_becomes_etcd_variables_as_coreos_named_them():
    assert etcd2_variables({"name": "core-01", "listen-client-urls": "http://0.0.0.0:2379",
                            "heartbeat_interval": 100, "debug": True, "ca-file": "/ca.pem",
                            "proxy": "on"}) == {
        "ETCD_NAME": "core-01", "ETCD_LISTEN_CLIENT_URLS": "http://0.0.0.0:2379",
        "ETCD_HEARTBEAT_INTERVAL": "100", "ETCD_DEBUG": "true",
        "ETCD_TRUSTED_CA_FILE": "/ca.pem",  # etcd 3.4 dropped --ca-file
        "ETCD_PROXY": "on"}


def test_fleet_section_becomes_fleet_variables_and_unknown_keys_are_noted():
    notes: list[str] = []
    assert fleet_variables({"public-ip": "10.0.0.1", "metadata": "a=b",
                            "etcd_cafile": "/ca.pem", "disable-engine": True,
                            "etcd_username": "u"}, notes) == {
        "FLEET_PUBLIC_IP": "10.0.0.1", "FLEET_METADATA": "a=b",
        "FLEET_ETCD_CAFILE": "/ca.pem", "FLEET_DISABLE_ENGINE": "true"}
    assert notes == ["fleet `etcd_username` is not a fleetd setting; left out"]


def test_flannel_tls_reaches_the_drop_ins_etcdctl_too():
    found = flannel_variables({"etcd-endpoints": "https://e:2379", "etcd-cafile": "/c.pem",
                               "etcd-certfile": "/f.pem", "etcd-keyfile": "/k.pem"})
    assert {k: v for k, v in found.items() if k.startswith("ETCDCTL_")} == {
        "ETCDCTL_ENDPOINTS": "https://e:2379", "ETCDCTL_CA_FILE": "/c.pem",
        "ETCDCTL_CERT_FILE": "/f.pem", "ETCDCTL_KEY_FILE": "/k.pem"}


def test_flannel_section_uses_coreos_names():
    assert flannel_variables({"interface": "10.0.0.1", "etcd-endpoints": "http://e:2379"}) == {
        "FLANNELD_IFACE": "10.0.0.1", "FLANNELD_ETCD_ENDPOINTS": "http://e:2379",
        "ETCDCTL_ENDPOINTS": "http://e:2379"}


@pytest.mark.parametrize("value, line", [
    pytest.param("plain", 'Environment="A=plain"', id="plain"),
    pytest.param('say "hi" 100%', 'Environment="A=say \\"hi\\" 100%%"', id="quotes-percent"),
    pytest.param("back\\slash\nnl", 'Environment="A=back\\\\slash\\nnl"', id="escapes"),
])
def test_environment_lines_hand_the_value_over_exactly(value, line):
    assert environment_line("A", value) == line


RENDERED = """\
hostname: core-01
coreos:
  etcd2:
    name: core-01
    advertise-client-urls: http://$public_ipv4:2379
    listen-client-urls: http://0.0.0.0:2379
  fleet:
    public-ip: $public_ipv4
    etcd-servers: http://$private_ipv4:2379
  flannel:
    interface: $public_ipv4
  units:
    - {name: etcd2.service, command: start}
    - {name: fleet.service, command: start}
    - name: flanneld.service
      command: start
      drop-ins:
        - name: 50-network-config.conf
          content: |
            [Service]
            ExecStartPre=/usr/bin/etcdctl set /coreos.com/network/config '{"Network":"10.1/16"}'
"""


def test_services_get_a_stock_unit_and_a_cloudinit_drop_in():
    got = config(RENDERED)
    units = {u.name: u for u in got.units}
    etcd = {f.path: f.content for f in units["etcd2.service"].files}
    assert "ExecStart=/usr/bin/etcd\n" in etcd["/run/systemd/system/etcd2.service"]
    assert "User=etcd\n" in etcd["/run/systemd/system/etcd2.service"]
    assert etcd["/run/systemd/system/etcd2.service.d/20-cloudinit.conf"] == (
        '[Service]\nEnvironment="ETCD_NAME=core-01"\n'
        'Environment="ETCD_ADVERTISE_CLIENT_URLS=http://172.17.8.101:2379"\n'
        'Environment="ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379"\n')
    fleet = {f.path: f.content for f in units["fleet.service"].files}
    assert 'Environment="FLEET_RUNNER=systemd"' in fleet["/run/systemd/system/fleet.service"]
    assert "ExecStart=/usr/local/bin/fleetd\n" in fleet["/run/systemd/system/fleet.service"]
    assert 'Environment="FLEET_ETCD_SERVERS=http://172.17.8.101:2379"' in \
        fleet["/run/systemd/system/fleet.service.d/20-cloudinit.conf"]
    flannel = [f.path for f in units["flanneld.service"].files]
    assert flannel == ["/run/systemd/system/flanneld.service",
                       "/run/systemd/system/flanneld.service.d/20-cloudinit.conf",
                       "/etc/systemd/system/flanneld.service.d/50-network-config.conf"]
    assert NO_FLANNELD in got.notes


def test_an_etcd2_drop_in_carrying_the_discovery_url_is_roots_alone():
    """The token URL lets anyone join the cluster: the drop-in holding it is written 0600
    (and chmodded back if someone widened it); one without it stays 0644 like the rest."""
    token = "https://discovery.etcd.io/3d9d0e8e4f3b4c7a9c1b2e5f6a7b8c9d"
    secret = config(f"coreos:\n  etcd2:\n    name: core-01\n    discovery: {token}\n")
    drop_in = "/run/systemd/system/etcd2.service.d/20-cloudinit.conf"
    files = {f.path: f for u in secret.units for f in u.files}
    assert f'Environment="ETCD_DISCOVERY={token}"' in files[drop_in].content
    assert files[drop_in].mode == 0o600
    assert files["/run/systemd/system/etcd2.service"].mode == 0o644
    writes = {a.path: a.mode for a in plan(secret, STATE).actions if isinstance(a, WriteFile)}
    assert writes[drop_in] == 0o600
    assert writes["/run/systemd/system/etcd2.service"] == 0o644
    widened = dict(applied_state(secret).files)
    widened[drop_in] = FileState("file", widened[drop_in].content, 0o100644, 0, 0)
    assert plan(secret, MachineState(files=widened, accounts=STATE.accounts,
                                     groups=STATE.groups, units=applied_state(secret).units,
                                     hostname=applied_state(secret).hostname)
                ).actions == (SetAttributes(drop_in, 0o600, None),)
    plain = config("coreos:\n  etcd2:\n    name: core-01\n")
    assert {f.path: f.mode for u in plain.units for f in u.files}[drop_in] == 0o644


def test_flanneld_runs_where_the_machine_has_it():
    facts = Facts(etcd="/usr/bin/etcd", etcd_user=None, flanneld="/opt/bin/flanneld")
    got = config(RENDERED, facts=facts)
    stock = next(u for u in got.units if u.name == "flanneld.service").files[0].content
    assert "ExecStart=/opt/bin/flanneld\n" in stock and "Type=notify" in stock
    assert NO_FLANNELD not in got.notes
    etcd = next(u for u in got.units if u.name == "etcd2.service").files[0].content
    assert "User=" not in etcd  # no etcd account here: as root


# -- the planner -----------------------------------------------------------------------------

@pytest.mark.parametrize("command, active, changed, expected", [
    pytest.param("start", "inactive", False, ("start", "not running"), id="start-stopped"),
    pytest.param("start", "failed", False, ("start", "not running"), id="start-failed"),
    pytest.param("start", "active", False, None, id="start-running"),
    pytest.param("start", "activating", False, None, id="start-starting"),
    pytest.param("start", "active", True, ("restart", "its files changed"),
                 id="start-running-changed"),
    pytest.param("start", "inactive", True, ("start", "not running"), id="start-new"),
    pytest.param("stop", "active", False, ("stop", "running"), id="stop-running"),
    pytest.param("stop", "inactive", True, None, id="stop-stopped"),
    pytest.param("restart", "active", False, None, id="restart-unchanged"),
    pytest.param("restart", "active", True, ("restart", "its files changed"),
                 id="restart-changed"),
    pytest.param("restart", "inactive", False, ("restart", "not running"),
                 id="restart-stopped"),
    pytest.param("try-restart", "inactive", True, None, id="try-restart-stopped"),
    pytest.param("try-restart", "active", True, ("try-restart", "its files changed"),
                 id="try-restart-changed"),
    pytest.param("reload", "active", False, None, id="reload-unchanged"),
    pytest.param("reload", "active", True, ("reload", "its files changed"), id="reload"),
    pytest.param("reload", "inactive", True, None, id="reload-stopped"),
    pytest.param("reload-or-restart", "inactive", False, ("reload-or-restart", "not running"),
                 id="reload-or-restart-stopped"),
    pytest.param("reload-or-try-restart", "active", False, None,
                 id="reload-or-try-restart-unchanged"),
    pytest.param(None, "active", True, None, id="no-command"),
])
def test_a_command_runs_only_when_it_changes_something(command, active, changed, expected):
    assert command_to_run(command, active, changed) == expected


STATE = MachineState(
    hostname="node-1",
    accounts={"root": Account("root", 0, 0, "/root"),
              "alice": Account("alice", 1001, 1002, "/home/alice", "$6$old")},
    groups={"root": 0, "alice": 1002, "sudo": 27})


@pytest.mark.parametrize("owner, expected", [
    pytest.param(None, (0, 0), id="root"),
    pytest.param("alice", (1001, None), id="user"),
    pytest.param("alice:sudo", (1001, 27), id="user-group"),
    pytest.param("alice:", (1001, 1002), id="user-login-group"),
    pytest.param(":sudo", (None, 27), id="group"),
    pytest.param("1500:1600", (1500, 1600), id="numbers"),
    pytest.param("bob", None, id="unknown-user"),
    pytest.param("alice:nogroup", None, id="unknown-group"),
])
def test_owner_specs_read_as_chown_reads_them(owner, expected):
    assert owner_ids(owner, STATE) == expected


@pytest.mark.parametrize("existing, expected", [
    pytest.param(None, f"{KEYS_BEGIN}\nk1\nk2\n{KEYS_END}\n", id="new"),
    pytest.param("mine\n", f"mine\n{KEYS_BEGIN}\nk1\nk2\n{KEYS_END}\n", id="kept-by-hand"),
    pytest.param(f"mine\n{KEYS_BEGIN}\nold\n{KEYS_END}\nlater\n",
                 f"mine\nlater\n{KEYS_BEGIN}\nk1\nk2\n{KEYS_END}\n", id="block-replaced"),
])
def test_authorized_keys_replace_only_their_own_block(existing, expected):
    assert authorized_keys(existing, ["k1", "k2"]) == expected


@pytest.mark.parametrize("path, unit", [
    pytest.param("/etc/systemd/system/a.service", "a.service", id="fragment"),
    pytest.param("/run/systemd/system/a.service.d/x.conf", "a.service", id="drop-in"),
    pytest.param("/lib/systemd/system/b.socket", "b.socket", id="vendor"),
    pytest.param("/etc/systemd/system.conf", None, id="not-a-unit-dir"),
    pytest.param("/etc/a.service", None, id="elsewhere"),
])
def test_unit_of_path(path, unit):
    assert unit_of_path(path) == unit


def applied_state(cfg, base: MachineState = STATE, active: str = "active",
                  file_state: str = "enabled") -> MachineState:
    """The machine as it is after `cfg` was applied: every planned file in place."""
    files = {}
    accounts = dict(base.accounts)
    for action in plan(cfg, base).actions:
        if isinstance(action, (WriteFile, MakeDirectory)):
            ids = owner_ids(action.owner, MachineState(accounts=accounts, groups=base.groups))
            uid, gid = ids if ids else (0, 0)
            if isinstance(action, WriteFile):
                files[action.path] = FileState("file", action.content, 0o100000 | action.mode,
                                               uid or 0, gid or 0)
            else:
                files[action.path] = FileState("directory", None, 0o40000 | action.mode,
                                               uid or 0, gid or 0)
        elif isinstance(action, Mask):
            files[action.path] = FileState("symlink", target="/dev/null")
        elif isinstance(action, CreateUser):
            accounts[action.user.name] = Account(action.user.name, 1000, 1000, action.user.home)
    units = {u.name: UnitState(active, file_state) for u in cfg.units}
    return MachineState(cfg.hostname or base.hostname, files, accounts, base.groups, units)


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_a_bare_machine_gets_everything_in_coreos_cloudinit_order():
    cfg = config(everything())
    actions = plan(cfg, STATE).actions
    described = [a.describe() for a in actions]
    assert described[0] == "user core: created"  # the hostname is already node-1
    assert kinds(actions).count("Reload") == 1
    reload_at = kinds(actions).index("Reload")
    assert kinds(actions)[reload_at - 1:] == ["EnableUnit", "Reload", "UnitCommand"]
    assert actions[-1] == UnitCommand("web.service", "start", "not running")
    assert Mask("ugly.service", "/etc/systemd/system/ugly.service") in actions
    assert MakeDirectory("/home/core/.ssh", 0o700, "core:") in actions
    writes = [a.path for a in actions if isinstance(a, WriteFile)]
    assert writes.index("/etc/b64") < writes.index("/etc/systemd/system/web.service")
    assert "/home/alice/.ssh/authorized_keys" in writes  # alice exists: her home
    assert "/etc/sudoers.d/core" in writes and "/etc/sudoers.d/alice" not in writes
    hosts = next(a for a in actions if isinstance(a, WriteFile) and a.path == "/etc/hosts")
    assert b"127.0.0.1\tnode-1\n" in hosts.content


def test_a_machine_that_matches_gets_no_action():
    cfg = config(everything())
    assert plan(cfg, applied_state(cfg)).actions == ()


def test_only_the_unit_whose_drop_in_changed_is_restarted():
    before = config(everything())
    state = applied_state(before)
    after = config(everything().replace("Environment=A=1", "Environment=A=2"))
    actions = plan(after, state).actions
    assert actions == (
        WriteFile("/etc/systemd/system/web.service.d/10-env.conf",
                  b"[Service]\nEnvironment=A=2\n", 0o644, None, False),
        EnableUnit("web.service", False),
        Reload(),
        UnitCommand("web.service", "restart", "its files changed"))


def test_a_stopped_unit_is_started_without_rewriting_anything():
    cfg = config(everything())
    state = applied_state(cfg)
    units = dict(state.units, **{"web.service": UnitState("failed", "enabled")})
    actions = plan(cfg, MachineState(state.hostname, state.files, state.accounts, state.groups,
                                     units)).actions
    assert actions == (UnitCommand("web.service", "start", "not running"),)


def test_right_content_with_wrong_mode_is_chmodded_not_rewritten():
    cfg = config("write_files:\n  - {path: /etc/a, content: x, permissions: '0600'}\n")
    state = MachineState(files={"/etc/a": FileState("file", b"x", 0o100644, 0, 0)})
    assert plan(cfg, state).actions == (SetAttributes("/etc/a", 0o600, None),)


def test_a_disabled_unit_is_enabled_and_a_static_one_left_alone():
    cfg = config("coreos:\n  units:\n    - {name: a.service, enable: true}\n"
                 "    - {name: b.service, enable: true}\n"
                 "    - {name: c.service, enable: true, runtime: true}\n")
    state = MachineState(units={"a.service": UnitState("inactive", "disabled"),
                                "b.service": UnitState("inactive", "static"),
                                "c.service": UnitState("inactive", "enabled-runtime")})
    assert plan(cfg, state).actions == (EnableUnit("a.service", False), Reload())


def test_unmasking_a_unit_the_user_data_no_longer_masks():
    cfg = config("coreos:\n  units:\n    - {name: a.service, command: start}\n")
    state = MachineState(files={"/etc/systemd/system/a.service": FileState(
        "symlink", target="/dev/null")}, units={"a.service": UnitState("inactive", "masked")})
    assert plan(cfg, state).actions == (Unmask("a.service", "/etc/systemd/system/a.service"),
                                        Reload(),
                                        UnitCommand("a.service", "start", "not running"))


def test_a_write_files_entry_in_a_unit_directory_reloads_and_restarts_its_unit():
    cfg = config("write_files:\n  - {path: /etc/systemd/system/a.service.d/x.conf, "
                 "content: '[Service]'}\ncoreos:\n  units:\n"
                 "    - {name: a.service, command: start}\n")
    state = MachineState(units={"a.service": UnitState("active", "static")})
    assert kinds(plan(cfg, state).actions) == ["WriteFile", "Reload", "UnitCommand"]
    assert plan(cfg, state).actions[-1].command == "restart"


def test_hostname_and_password_of_an_existing_user():
    cfg = config("hostname: other\nusers:\n  - {name: alice, passwd: $6$new}\n")
    actions = plan(cfg, STATE).actions
    assert actions[0] == SetHostname("other")
    assert SetPassword("alice", "$6$new") in actions


@pytest.mark.parametrize("text, message", [
    pytest.param("write_files:\n  - {path: /etc/a, owner: bob}\n",
                 'ud:3:27: write_files[0]: owner "bob" does not exist on this machine',
                 id="unknown-owner"),
    pytest.param("users:\n  - {name: bob, groups: [wheel]}\n",
                 'ud:3:5: user bob: group "wheel" does not exist', id="unknown-group"),
])
def test_names_the_machine_lacks_refuse_the_plan(text, message):
    with pytest.raises(UserError) as caught:
        plan(config(text), STATE)
    assert message in str(caught.value)


def test_a_file_may_belong_to_a_user_made_in_the_same_pass():
    cfg = config("users:\n  - {name: bob}\nwrite_files:\n  - {path: /etc/a, owner: bob}\n")
    assert kinds(plan(cfg, STATE).actions) == ["CreateUser", "WriteFile"]


# -- the seam for providers: seed files and the boot unit ------------------------------------

def test_seed_files_give_the_boot_unit_its_user_data_and_addresses():
    files = seed_files("#cloud-config\n", "172.17.8.101", hostname="core-01")
    assert files == {
        "/var/lib/provision/user-data": (b"#cloud-config\n", 0o600),
        "/etc/environment": (b"COREOS_PRIVATE_IPV4=172.17.8.101\n"
                             b"COREOS_PUBLIC_IPV4=172.17.8.101\n", 0o644),
        "/etc/hostname": (b"core-01\n", 0o644)}
    environment = parse_environment_file(files["/etc/environment"][0].decode())
    assert machine_addresses({}, {}, environment) == IP


def test_the_boot_unit_reads_what_the_seed_writes():
    text = (resources.files("provision.machine") / "units" /
            "provision-cloudinit.service").read_text()
    unit = parse_unit_file(text)
    assert unit.get("Unit", "ConditionPathExists") == [USER_DATA]
    assert unit.get("Service", "EnvironmentFile") == [f"-{ENVIRONMENT_FILE}"]
    assert unit.get("Service", "ExecStart") == [
        f"/usr/local/bin/provision cloudinit --from-file {USER_DATA}"]
    assert set(unit.get("Unit", "Before")[0].split()) == {
        "etcd2.service", "fleet.service", "flanneld.service"}
