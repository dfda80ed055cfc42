"""fleetctl over SSH, with the system `ssh` client: `fleetctl ssh MACHINE|UNIT [COMMAND]`
and the global `--tunnel HOST[:PORT]`, as fleet v1.0.0 has them.

The pure parts are here and table-tested: the `ssh` command lines (`ssh_argv`,
`jump_argv`, `api_relay_argv`) from `SshOptions`, and which address a `fleetctl ssh`
argument means (`resolve_target`). Running them is `fleetd.fleetctl.remote`'s job.

Host keys: fleet's `--strict-host-key-checking` (default true) checks every host against
`--known-hosts-file` (default ~/.fleetctl/known_hosts) and asks before trusting an
unknown one: OpenSSH's `StrictHostKeyChecking=ask` with that file as
`UserKnownHostsFile`. false checks nothing and records nothing. `--ssh-config FILE`
(ours; fleet read keys from the ssh-agent only) hands ssh a config such as the one
`provision env` writes from `vagrant ssh-config`: per-host keys, user and port.

Through `--tunnel`, a machine is reached by hopping through the tunnel host (ssh's
ProxyCommand `ssh … -W [HOST]:PORT TUNNEL`, built here so the hop checks its host key
with the same options), and the fleet API is reached by relaying one HTTP connection per
ssh session: to a TCP endpoint with `ssh -W host:port`; to the unix socket, which is
root's only (0600), through `sudo -n` on the tunnel host: the socket stays exactly as
private as it is, you reach it only as a user who could run fleetctl there.
"""

from __future__ import annotations

import os
import shlex
from collections import namedtuple
from collections.abc import Iterable, Sequence

from fleetd.fleetctl.errors import FleetctlError, UsageError

DEFAULT_USERNAME = "core"
DEFAULT_PORT = 22
DEFAULT_KNOWN_HOSTS = "~/.fleetctl/known_hosts"

# Runs on the tunnel host: copies stdin to the unix socket argv[1] and the socket's
# answer to stdout; python3 is on every machine this project provisions.
_RELAY = (
    "import os,socket,sys,threading\n"
    "s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1])\n"
    "def up():\n"
    " while (b:=os.read(0,65536)):s.sendall(b)\n"
    " s.shutdown(socket.SHUT_WR)\n"
    "threading.Thread(target=up,daemon=True).start()\n"
    "while (b:=s.recv(65536)):os.write(1,b)\n"
)


# A named tuple, not a dataclass: every fleetctl command makes one, and dataclasses cost
# a short command more than its own work (see fleetd.fleetctl.model).
class SshOptions(namedtuple("SshOptions", (
        "username", "port", "strict_host_key_checking", "known_hosts_file", "config_file",
        "tunnel", "forward_agent", "jump"),
        defaults=(DEFAULT_USERNAME, DEFAULT_PORT, True, DEFAULT_KNOWN_HOSTS, None, None, False,
                  None))):
    __slots__ = ()
    username: str
    port: int
    strict_host_key_checking: bool
    known_hosts_file: str
    config_file: str | None
    tunnel: str | None           # HOST[:PORT]
    forward_agent: bool
    jump: str | None             # HOST[:PORT] to reach `tunnel` through


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` → (host, port)."""
    text = text.strip()
    if not text:
        raise UsageError("an SSH host is empty; give HOST or HOST:PORT")
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"SSH host {text!r}: write [IPv6] or [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise UsageError(f"SSH host {text!r} has no host part")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"SSH host {text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _common(options: SshOptions) -> list[str]:
    argv = []
    if options.config_file:
        argv += ["-F", os.path.expanduser(options.config_file)]
    if options.strict_host_key_checking:
        argv += ["-o", "StrictHostKeyChecking=ask",
                 "-o", f"UserKnownHostsFile={os.path.expanduser(options.known_hosts_file)}"]
    else:
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "LogLevel=ERROR"]
    return argv


def _hop(options: SshOptions, host: str, port: int) -> list[str]:
    """Options and destination of one plain connection to host:port as the user."""
    return ["ssh", *_common(options), "-l", options.username, "-p", str(port), "--", host]


def jump_argv(options: SshOptions) -> list[str]:
    """ProxyCommand options reaching any host through the tunnel host (none without one)."""
    if not options.tunnel:
        return []
    host, port = split_host_port(options.tunnel, DEFAULT_PORT)
    hop = _hop(options, host, port)
    proxy = [*hop[:-2], "-W", "[%h]:%p", "--", host]
    return ["-o", "ProxyCommand=" + shlex.join(proxy)]


def ssh_argv(options: SshOptions, address: str, command: Sequence[str] = (),
             tty: bool = False) -> list[str]:
    """`fleetctl ssh`: a shell (no command; a tty) or COMMAND on the machine at
    `address` (ssh's port, through the tunnel when there is one)."""
    host, port = split_host_port(address, options.port)
    argv = [*_hop(options, host, port)]
    flags = jump_argv(options)
    if options.forward_agent:
        flags.append("-A")
    flags.append("-t" if tty or not command else "-T")
    argv[1:1] = flags
    return argv + list(command)


def api_relay_argv(options: SshOptions, endpoint_scheme: str, address: str) -> list[str]:
    """One ssh session to the tunnel host (through `jump` when set) whose stdin/stdout
    is a connection to the fleet API at `address` there (a socket path for `unix`,
    host:port otherwise)."""
    if not options.tunnel:
        raise FleetctlError("internal: an API relay needs --tunnel")
    host, port = split_host_port(options.tunnel, DEFAULT_PORT)
    hop = _hop(options, host, port)
    flags = ["-T", "-o", "ConnectTimeout=15"]
    if options.jump:
        flags += jump_argv(options._replace(tunnel=options.jump, jump=None))
    if endpoint_scheme == "unix":
        sudo = [] if options.username == "root" else ["sudo", "-n"]
        return [hop[0], *flags, *hop[1:],
                shlex.join([*sudo, "python3", "-c", _RELAY, address])]
    relay_host, relay_port = split_host_port(address, 80)
    return [hop[0], *flags, "-W", f"[{relay_host}]:{relay_port}", *hop[1:]]


# -- which machine an argument means ------------------------------------------------------

class MachineRef(namedtuple("MachineRef", ("id", "address"))):
    __slots__ = ()
    id: str
    address: str


def resolve_target(lookup: str, machines: Iterable[MachineRef], unit_machine: str | None,
                   unit_found: bool, unit_global: bool = False, *, only: str | None = None
                   ) -> str:
    """The address `fleetctl ssh LOOKUP` connects to, as fleet decides it: a machine whose
    ID starts with LOOKUP, or the machine running unit LOOKUP (`unit_machine`: its machine
    ID, '' when not scheduled; `unit_found`: the unit exists). `only` is "machine" or
    "unit" (--machine/--unit) to skip the other lookup. Ambiguity is an error."""
    machines = list(machines)
    matched = [m for m in machines if m.id.startswith(lookup)] if lookup else []
    machine_error = None
    if len(matched) > 1:
        machine_error = f"more than one machine ID starts with {lookup!r}"
    elif not matched:
        machine_error = "no machine with that ID"
    unit_address, unit_error = _unit_address(machines, unit_machine, unit_found, unit_global)
    if only == "machine":
        if machine_error:
            raise FleetctlError(f"Unable to proceed: {machine_error}: {lookup}")
        return _address_of(matched[0])
    if only == "unit":
        if unit_error:
            raise FleetctlError(f"Unable to proceed: unit {lookup}: {unit_error}")
        return unit_address
    if not machine_error and not unit_error:
        raise FleetctlError(f"Unable to proceed: ambiguous argument, both machine and unit "
                            f"found for {lookup!r}; use --machine or --unit")
    if not machine_error:
        return _address_of(matched[0])
    if not unit_error:
        return unit_address
    if unit_found:
        raise FleetctlError(f"Unable to proceed: unit {lookup}: {unit_error}")
    if len(matched) > 1:
        raise FleetctlError(f"Unable to proceed: {machine_error}")
    raise FleetctlError(f"Unable to proceed: could not find a machine or unit {lookup!r}")


def _unit_address(machines: list[MachineRef], unit_machine: str | None, unit_found: bool,
                  unit_global: bool) -> tuple[str, str | None]:
    """The address of the machine running the unit, or why there is none."""
    by_id = {m.id: m for m in machines}
    if not unit_found:
        return "", "no such unit"
    if unit_global:
        return "", "global units are not supported (they run on every machine)"
    if not unit_machine:
        return "", "the unit is not scheduled on any machine"
    if unit_machine not in by_id or not by_id[unit_machine].address:
        return "", f"machine {unit_machine[:8]}... running it has no known address"
    return by_id[unit_machine].address, None


def via_tunnel(options: SshOptions, machine_address: str) -> SshOptions:
    """Options reaching another machine's API (`fleetctl status`/`journal` of a unit it
    runs): that machine is the relay's host, reached through the tunnel host."""
    tunnel_host, _ = split_host_port(options.tunnel or "", DEFAULT_PORT)
    target = f"[{machine_address}]:{options.port}" if ":" in machine_address \
        else f"{machine_address}:{options.port}"
    if machine_address == tunnel_host:
        return options
    return options._replace(tunnel=target, jump=options.tunnel)


def _address_of(machine: MachineRef) -> str:
    if not machine.address:
        raise FleetctlError(f"Could not determine the address of machine {machine.id[:8]}...")
    return machine.address
