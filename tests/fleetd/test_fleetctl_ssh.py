"""fleetctl's SSH features, the pure parts: flags and variables → options, options →
ssh command lines, `fleetctl ssh` argument → address. (The real thing against Vagrant
machines: tests/integration/test_vagrant_lxc.py.)"""

from __future__ import annotations

import io
import os
import shlex

import pytest

from fleetd.fleetctl.errors import FleetctlError, UsageError
from fleetd.fleetctl.main import build_parser, run, ssh_options
from fleetd.fleetctl.ssh import (
    MachineRef,
    SshOptions,
    api_relay_argv,
    resolve_target,
    split_host_port,
    ssh_argv,
    via_tunnel,
)

KNOWN = os.path.expanduser("~/.fleetctl/known_hosts")
STRICT = ["-o", "StrictHostKeyChecking=ask", "-o", f"UserKnownHostsFile={KNOWN}"]
LOOSE = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR"]


@pytest.mark.parametrize(("text", "host", "port"), [
    ("10.0.0.1", "10.0.0.1", 22),
    ("10.0.0.1:2222", "10.0.0.1", 2222),
    ("core-01", "core-01", 22),
    ("[fd00::1]", "fd00::1", 22),
    ("[fd00::1]:2200", "fd00::1", 2200),
    ("fd00::1", "fd00::1", 22),  # several colons: an IPv6 address without a port
])
def test_host_and_port(text, host, port):
    assert split_host_port(text, 22) == (host, port)


@pytest.mark.parametrize("text", ["", ":22", "h:0", "h:99999", "h:x", "[fd00::1", "[::1]x"])
def test_bad_host_and_port_is_a_usage_error(text):
    with pytest.raises(UsageError):
        split_host_port(text, 22)


@pytest.mark.parametrize(("options", "address", "command", "want"), [
    # fleet's defaults: user core, port 22, strict checking against ~/.fleetctl/known_hosts
    (SshOptions(), "10.0.0.3", [],
     ["ssh", "-t", *STRICT, "-l", "core", "-p", "22", "--", "10.0.0.3"]),
    (SshOptions(username="vagrant", port=2200, strict_host_key_checking=False),
     "10.0.0.3", ["uptime"],
     ["ssh", "-T", *LOOSE, "-l", "vagrant", "-p", "2200", "--", "10.0.0.3", "uptime"]),
    (SshOptions(known_hosts_file="/k", config_file="/c", forward_agent=True), "h:2022",
     ["ls", "-l"],
     ["ssh", "-A", "-T", "-F", "/c", "-o", "StrictHostKeyChecking=ask",
      "-o", "UserKnownHostsFile=/k", "-l", "core", "-p", "2022", "--", "h", "ls", "-l"]),
])
def test_ssh_command_line(options, address, command, want):
    assert ssh_argv(options, address, command) == want


def test_through_a_tunnel_the_hop_checks_its_host_key_the_same_way():
    options = SshOptions(username="vagrant", tunnel="10.0.0.1:2201", config_file="/c")
    argv = ssh_argv(options, "10.0.0.3", ["hostname"])
    assert argv[:3] == ["ssh", "-o", argv[2]]
    proxy = shlex.split(argv[2].removeprefix("ProxyCommand="))
    assert proxy == ["ssh", "-F", "/c", *STRICT, "-l", "vagrant", "-p", "2201",
                     "-W", "[%h]:%p", "--", "10.0.0.1"]
    assert argv[-5:] == ["-p", "22", "--", "10.0.0.3", "hostname"]


def test_api_relay_to_the_root_only_socket_goes_through_sudo():
    argv = api_relay_argv(SshOptions(username="vagrant", tunnel="10.0.0.1"), "unix",
                          "/var/run/fleet.sock")
    assert argv[:6] == ["ssh", "-T", "-o", "ConnectTimeout=15", *STRICT[:2]]
    assert argv[-7:-1] == ["-l", "vagrant", "-p", "22", "--", "10.0.0.1"]
    remote = shlex.split(argv[-1])
    assert remote[:4] == ["sudo", "-n", "python3", "-c"]
    assert remote[-1] == "/var/run/fleet.sock"
    as_root = api_relay_argv(SshOptions(username="root", tunnel="h"), "unix", "/s")
    assert shlex.split(as_root[-1])[0] == "python3"


def test_api_relay_to_a_tcp_endpoint_is_sshs_own_stdio_forward():
    argv = api_relay_argv(SshOptions(tunnel="h:2222", strict_host_key_checking=False),
                          "http", "127.0.0.1:49153")
    assert argv == ["ssh", "-T", "-o", "ConnectTimeout=15", "-W", "[127.0.0.1]:49153",
                    *LOOSE, "-l", "core", "-p", "2222", "--", "h"]


MACHINES = [MachineRef("abc111", "10.0.0.1"), MachineRef("abc222", "10.0.0.2"),
            MachineRef("def333", "10.0.0.3"), MachineRef("noaddr", "")]


@pytest.mark.parametrize(("lookup", "unit", "only", "want"), [
    ("def", None, None, "10.0.0.3"),                      # a unique machine ID prefix
    ("abc111", None, None, "10.0.0.1"),
    ("hello", ("abc222", False), None, "10.0.0.2"),        # the machine running the unit
    ("hello", ("abc222", False), "unit", "10.0.0.2"),
    ("abc111", ("def333", False), "machine", "10.0.0.1"),  # --machine skips the unit
    ("abc111", ("def333", False), "unit", "10.0.0.3"),     # --unit skips the machine
    ("abc", ("def333", False), None, "10.0.0.3"),          # prefix ambiguous: the unit wins
])
def test_which_machine_an_argument_means(lookup, unit, only, want):
    machine, is_global = unit if unit else (None, False)
    assert resolve_target(lookup, MACHINES, machine, unit is not None, is_global,
                          only=only) == want


@pytest.mark.parametrize(("lookup", "unit", "only", "message"), [
    ("abc111", ("def333", False), None, "ambiguous argument"),
    ("abc", None, None, "more than one machine"),
    ("zzz", None, None, "could not find a machine or unit 'zzz'"),
    ("hello", ("", False), None, "not scheduled"),
    ("hello", ("abc111", True), None, "global units are not supported"),
    ("hello", ("gone99", False), None, "has no known address"),
    ("noaddr", None, "machine", "address of machine noaddr"),
    ("hello", None, "unit", "no such unit"),
    ("zzz", None, "machine", "no machine with that ID"),
])
def test_arguments_that_mean_no_single_machine(lookup, unit, only, message):
    machine, is_global = unit if unit else (None, False)
    with pytest.raises(FleetctlError, match=message):
        resolve_target(lookup, MACHINES, machine, unit is not None, is_global, only=only)


@pytest.mark.parametrize(("argv", "env", "want"), [
    ([], {}, SshOptions()),
    (["--tunnel", "10.0.0.1:2222", "--ssh-username", "vagrant",
      "--strict-host-key-checking=false", "--ssh-port", "2200", "--ssh-config", "/c"], {},
     SshOptions("vagrant", 2200, False, tunnel="10.0.0.1:2222", config_file="/c")),
    ([], {"FLEETCTL_TUNNEL": "t", "FLEETCTL_SSH_USERNAME": "u", "FLEETCTL_SSH_PORT": "2022",
          "FLEETCTL_STRICT_HOST_KEY_CHECKING": "false", "FLEETCTL_KNOWN_HOSTS_FILE": "/k",
          "FLEETCTL_SSH_CONFIG": "/c"},
     SshOptions("u", 2022, False, "/k", "/c", "t")),
    (["--ssh-username", "flag"], {"FLEETCTL_SSH_USERNAME": "env"},  # the flag wins
     SshOptions(username="flag")),
    (["--strict-host-key-checking=true"], {"FLEETCTL_STRICT_HOST_KEY_CHECKING": "false"},
     SshOptions()),
])
def test_flags_then_variables_then_fleets_defaults(argv, env, want):
    args = build_parser().parse_args([*argv, "list-machines"])
    assert ssh_options(args, env) == want


def test_global_ssh_flags_after_the_command_too():
    args = build_parser().parse_args(["ssh", "--tunnel", "h", "hello", "uptime"])
    assert ssh_options(args, {}).tunnel == "h"
    assert args.words == ["hello", "uptime"]


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--tunnel", "h:x", "list-machines"], {}, "the port must be a number"),
    (["list-machines"], {"FLEETCTL_STRICT_HOST_KEY_CHECKING": "maybe"},
     "FLEETCTL_STRICT_HOST_KEY_CHECKING"),
    (["--strict-host-key-checking=maybe", "list-machines"], {}, "not true or false"),
    (["ssh"], {"FLEETCTL_ENDPOINT": "unix:///nonexistent.sock"}, "name one machine or unit"),
    (["ssh", "--machine", "a", "--unit", "b"], {}, "not allowed with"),
])
def test_bad_ssh_settings_are_one_line_usage_errors(argv, env, message):
    err = io.StringIO()
    assert run(argv, env=env, stdout=io.StringIO(), stderr=err) == 2
    assert message in err.getvalue()


def test_another_machines_api_is_relayed_from_that_machine_through_the_tunnel():
    options = SshOptions(username="vagrant", tunnel="10.0.0.1", strict_host_key_checking=False)
    assert via_tunnel(options, "10.0.0.1") == options  # the tunnel host itself
    other = via_tunnel(options, "10.0.0.3")
    assert (other.tunnel, other.jump) == ("10.0.0.3:22", "10.0.0.1")
    argv = api_relay_argv(other, "unix", "/var/run/fleet.sock")
    assert argv[-7:-1] == ["-l", "vagrant", "-p", "22", "--", "10.0.0.3"]
    proxy = next(a for a in argv if a.startswith("ProxyCommand="))
    assert shlex.split(proxy.removeprefix("ProxyCommand="))[-4:] == [
        "-W", "[%h]:%p", "--", "10.0.0.1"]
    assert via_tunnel(SshOptions(tunnel="[fd00::1]:2200", port=2222), "fd00::3").tunnel == \
        "[fd00::3]:2222"


# fleet's bool flags are Go's: `--flag` alone is true and takes no word after it; a value
# is given as `--flag=VALUE` with strconv.ParseBool's spellings.
@pytest.mark.parametrize(("argv", "strict"), [
    (["list-machines"], None),                                   # unset: fleet's default
    (["--strict-host-key-checking", "list-machines"], True),     # bare: true, takes no word
    (["--strict-host-key-checking=false", "list-machines"], False),
    (["--strict-host-key-checking=true", "list-machines"], True),
    (["--strict-host-key-checking=0", "list-machines"], False),
    (["--strict-host-key-checking=F", "list-machines"], False),
    (["--strict-host-key-checking=FALSE", "list-machines"], False),
    (["--strict-host-key-checking=True", "list-machines"], True),
    (["--strict-host-key-checking=1", "list-machines"], True),
    (["list-machines", "--strict-host-key-checking=false"], False),  # after the command
    (["list-machines", "--strict-host-key-checking"], True),
    (["--strict-host-key-checking=false", "list-machines",        # the last one given wins
      "--strict-host-key-checking"], True),
])
def test_strict_host_key_checking_parses_as_a_go_bool_flag(argv, strict):
    args = build_parser().parse_args(argv)
    assert getattr(args, "strict_host_key_checking", None) is strict
    assert args.command == "list-machines"


@pytest.mark.parametrize(("argv", "dest", "value"), [
    (["list-units", "--no-legend=false"], "no_legend", False),
    (["list-units", "--no-legend"], "no_legend", True),
    (["list-units", "--full=true", "-l"], "full", True),
    (["list-units", "--full=f"], "full", False),
    (["start", "--no-block=1", "web@1"], "no_block", True),
    (["ssh", "--forward-agent=false", "web@1"], "forward_agent", False),
    (["ssh", "-A", "web@1"], "forward_agent", True),
])
def test_fleets_other_bool_flags_take_the_same_forms(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) is value


@pytest.mark.parametrize(("argv", "message"), [
    # a value that strconv.ParseBool refuses
    (["--strict-host-key-checking=maybe", "list-machines"],
     "argument --strict-host-key-checking: 'maybe' is not true or false"),
    (["--strict-host-key-checking=yes", "list-machines"], "'yes' is not true or false"),
    (["--strict-host-key-checking=", "list-machines"], "'' is not true or false"),
    (["list-units", "--no-legend=no"], "argument --no-legend: 'no' is not true or false"),
    # `--flag false`: fleet reads the flag (true) and then a word `false` (the command,
    # or an argument list-machines does not take); refused, with the form meant
    (["--strict-host-key-checking", "false", "list-machines"],
     "unknown command 'false' (--strict-host-key-checking false: a bool flag takes its "
     "value after '=', --strict-host-key-checking=false"),
    (["list-machines", "--strict-host-key-checking", "false"],
     "unrecognized arguments: false (--strict-host-key-checking false"),
    (["list-units", "--no-legend", "true"], "--no-legend=true"),
])
def test_bool_flags_refuse_what_go_refuses(argv, message):
    err = io.StringIO()
    env = {"FLEETCTL_ENDPOINT": "unix:///nonexistent.sock"}
    assert run(argv, env=env, stdout=io.StringIO(), stderr=err) == 2
    assert message in err.getvalue()
    assert "Traceback" not in err.getvalue()


@pytest.mark.parametrize(("value", "strict"), [
    ("false", False), ("0", False), ("F", False), ("true", True), ("T", True), ("1", True)])
def test_the_variable_takes_go_bool_spellings(value, strict):
    args = build_parser().parse_args(["list-machines"])
    assert ssh_options(args, {"FLEETCTL_STRICT_HOST_KEY_CHECKING": value}) \
        .strict_host_key_checking is strict


def test_the_variable_refuses_what_go_refuses():
    err = io.StringIO()
    env = {"FLEETCTL_ENDPOINT": "unix:///nonexistent.sock",
           "FLEETCTL_STRICT_HOST_KEY_CHECKING": "yes"}
    assert run(["list-machines"], env=env, stdout=io.StringIO(), stderr=err) == 2
    assert "FLEETCTL_STRICT_HOST_KEY_CHECKING: 'yes' is not true or false" in err.getvalue()
