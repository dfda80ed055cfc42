"""`fleetctl` console script: parse arguments, run one command, map errors to exit codes.

Commands return data or raise typed errors; `run` is the only place that prints
errors: `UsageError` (bad arguments or input files) exits 2 with a pointer to
`--help`, any other `FleetctlError` (unknown unit, conflict, timeout, API
unreachable) exits 1 with its message, Ctrl-C prints a short notice and exits 1
(but ends `journal -f` normally).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence

from fleetd.argtypes import (
    BadValue,
    non_negative_duration,
    non_negative_int,
    port,
    positive_duration,
)
from fleetd.fleetctl import ssh as fleet_ssh
from fleetd.fleetctl.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, FleetctlError, UsageError

# typing.TYPE_CHECKING without importing typing: a listing imports neither typing nor
# dataclasses (with inspect), ~0.04 s of every command (tests/fleetd/test_fleetctl_imports.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import NoReturn, TextIO

    from fleetd.fleetctl.client import Endpoint
    from fleetd.fleetctl.session import Session
    from fleetd.fleetctl.waiting import WaitPolicy

PROG = "fleetctl"
DEFAULT_SOCKET = "/var/run/fleet.sock"
# Well above fleetd's etcd request timeout (3 s by default): when etcd stalls, fleetd's
# 503 naming etcd must reach the user on a loaded machine, not a timeout of our own.
DEFAULT_REQUEST_TIMEOUT = 10.0
TUNNEL_REQUEST_TIMEOUT = 30.0  # ssh's connection and login come first


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        command = self.prog[len(PROG):].strip() if self.prog.startswith(PROG) else ""
        unknown = re.match(r"argument COMMAND: invalid choice: '(.*?)'", message)
        if unknown:
            message = f"unknown command {unknown.group(1)!r}"
            import difflib  # only for a mistyped command

            close = difflib.get_close_matches(unknown.group(1), COMMANDS, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        bad_bool = re.match(r"argument (\S+?)(?:/(--\S+))?: ignored explicit argument (.*)",
                            message)
        if bad_bool:
            flag = bad_bool.group(2) or bad_bool.group(1)
            message = f"argument {flag}: {bad_bool.group(3)} is not {GO_BOOL_SYNTAX}"
        # A bad value of one flag needs no usage dump: the message names the flag.
        usage = None if message.startswith("argument -") else self.format_usage()
        raise UsageError(message, usage=usage, command=command or None)


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The global options; on subcommands they default to SUPPRESS so that giving them
    after the command works without hiding a value given before it."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--endpoint", default=default, metavar="URL",
                        help="fleet API: unix:///path/to/fleet.sock or http://host:port "
                             f"(env FLEETCTL_ENDPOINT; default unix://{DEFAULT_SOCKET} "
                             "when it exists)")
    parser.add_argument("--request-timeout", type=positive_duration, default=default,
                        metavar="SECONDS",
                        help="time allowed for a single request (env "
                             f"FLEETCTL_REQUEST_TIMEOUT; default {DEFAULT_REQUEST_TIMEOUT:g}, "
                             f"{TUNNEL_REQUEST_TIMEOUT:g} through --tunnel)")
    parser.add_argument("--tunnel", default=default, metavar="HOST[:PORT]",
                        help="reach the fleet API through SSH to this machine, and `ssh` "
                             "other machines through it (env FLEETCTL_TUNNEL)")
    parser.add_argument("--ssh-username", default=default, metavar="USER",
                        help="user for SSH (env FLEETCTL_SSH_USERNAME; default "
                             f"{fleet_ssh.DEFAULT_USERNAME})")
    parser.add_argument("--ssh-port", type=port, default=default, metavar="PORT",
                        help="SSH port of the machines `ssh` connects to (env "
                             f"FLEETCTL_SSH_PORT; default {fleet_ssh.DEFAULT_PORT})")
    go_bool_flag(parser, "--strict-host-key-checking", default=default,
                 help="check SSH host keys against --known-hosts-file, asking before "
                      "trusting a new one; =false checks nothing (env "
                      "FLEETCTL_STRICT_HOST_KEY_CHECKING; default true)")
    parser.add_argument("--known-hosts-file", default=default, metavar="FILE",
                        help="SSH known hosts (env FLEETCTL_KNOWN_HOSTS_FILE; default "
                             f"{fleet_ssh.DEFAULT_KNOWN_HOSTS})")
    parser.add_argument("--ssh-config", default=default, metavar="FILE",
                        help="an ssh_config for SSH (keys, users per host; env "
                             "FLEETCTL_SSH_CONFIG; `provision env` sets it for Vagrant)")


# Go's strconv.ParseBool: the spellings fleet's bool flags and FLEETCTL_* variables take.
GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")
GO_BOOL_SYNTAX = "true or false (or 1, t, T, TRUE, True, 0, f, F, FALSE, False)"
GO_BOOL_FLAGS: set[str] = set()  # every long bool flag, filled as the parser is built


def parse_go_bool(text: str) -> bool:
    if text in GO_TRUE:
        return True
    if text in GO_FALSE:
        return False
    raise ValueError(f"{text!r} is not {GO_BOOL_SYNTAX}")


class _GoBoolValue(argparse.Action):
    """`--flag=VALUE`. Every accepted spelling is an option string of its own, so the
    flag itself takes no argument: a bare `--flag` is true and never swallows the next
    word, as with Go's bool flags (`--flag false` is the flag, then the word `false`)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, parse_go_bool((option_string or "").partition("=")[2]))


def go_bool_flag(parser, *names: str, default: object = False, help: str | None = None,
                 dest: str | None = None) -> argparse.Action:
    """A bool flag as fleet's are: `--flag` (true), `--flag=true|false|1|0|…`. `parser`
    may be a mutually exclusive group."""
    named = {"dest": dest} if dest else {}
    action = parser.add_argument(*names, action="store_const", const=True, default=default,
                                 help=help, **named)
    spelled = [f"{name}={value}" for name in names if name.startswith("--")
               for value in GO_TRUE + GO_FALSE]
    GO_BOOL_FLAGS.update(name for name in names if name.startswith("--"))
    parser.add_argument(*spelled, action=_GoBoolValue, dest=action.dest,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return action


def separate_bool_value(argv: Sequence[str]) -> tuple[str, str] | None:
    """(flag, value) where a bool flag is followed by a bool word (`--flag false`): Go's
    flags read that as the flag set true and a word of its own."""
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in GO_BOOL_FLAGS and value in GO_TRUE + GO_FALSE:
            return flag, value
    return None


def _list_options(parser: argparse.ArgumentParser, fields: str) -> None:
    go_bool_flag(parser, "-l", "--full",
                 help="do not abbreviate machine ids and hashes")
    go_bool_flag(parser, "--no-legend", help="do not print the header")
    parser.add_argument("--fields", metavar="A,B", help=f"columns to print, in order ({fields})")
    parser.add_argument("--output", choices=("table", "json"), default="table",
                        help="table (default) or json")


def _block_options(parser: argparse.ArgumentParser, what: str) -> None:
    from fleetd.fleetctl.waiting import DEFAULT_TIMEOUT

    group = parser.add_mutually_exclusive_group()
    go_bool_flag(group, "--no-block",
                 help=f"do not wait until the units are {what}")
    group.add_argument("--block-attempts", type=non_negative_int, default=0, metavar="N",
                       help=f"wait until the units are {what}, polling up to N times "
                            "(0: until --block-timeout)")
    parser.add_argument("--block-timeout", type=non_negative_duration, default=None,
                        metavar="SECONDS",
                        help=f"give up waiting after SECONDS (default {DEFAULT_TIMEOUT:g}; "
                             "0: wait forever)")


EPILOG = """\
units:
  A UNIT is a unit file path (units/web.service), a unit name (.service is added
  when no type is given: hello, apache@1) or a glob (web@*) over the units the
  cluster has. A glob matches templates too, but only destroy acts on them:
  load/start/stop/unload skip templates, which never run (fleet 1.0 has no globs).
  start and load refuse a template at once: start its instances instead.

exit status (fleet's fleetctl exits 2 only for unknown commands and options, else 1):
  0  success; also when stop/unload/destroy find none of the named units
     ("Units not found in registry"), as fleet does
  1  the cluster refused or could not do it: unknown unit, conflicting content,
     a unit that failed, cannot be scheduled, or did not reach its state in time
  2  usage error: bad arguments or options, a bad unit name or unit file, an empty
     file, a template given to start or load (fleet: 1)
"""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `only` just that command's (building every
    command's parser cost a listing more than a tenth of its time)."""
    parser = _Parser(prog=PROG, description="fleetctl is a command-line interface to fleet, "
                     "the cluster-wide init system.", epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(parser, suppress=False)
    go_bool_flag(parser, "--version", help="print the version and exit")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, command in TABLE.items():
        if only is not None and name != only:
            continue
        command.arguments(sub.add_parser(name, help=command.help, description=command.help,
                                         parents=[common]))
    return parser


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """`argv` parsed by the parser of its command alone (the first word naming one), as
    the whole parser would parse it; anything else (no command, an error, a global
    option's value that names a command) is parsed by the whole parser, which words
    its errors and help as ever."""
    named = next((arg for arg in argv if arg in TABLE), None)
    if named is not None:
        try:
            args = build_parser(only=named).parse_args(list(argv))
            if args.command == named:
                return args
        except UsageError:
            pass
    return build_parser().parse_args(list(argv))


def resolve_endpoint(flag: str | None, env: Mapping[str, str],
                     exists: Callable[[str], bool] = os.path.exists) -> Endpoint:
    from fleetd.fleetctl.client import Endpoint, parse_endpoint

    if flag:
        return parse_endpoint(flag)
    if env.get("FLEETCTL_ENDPOINT"):
        return parse_endpoint(env["FLEETCTL_ENDPOINT"])
    if exists(DEFAULT_SOCKET):
        return Endpoint("unix", DEFAULT_SOCKET)
    raise UsageError(f"no fleet endpoint: {DEFAULT_SOCKET} does not exist; set --endpoint "
                     "or FLEETCTL_ENDPOINT to unix:///path/to/fleet.sock or http://host:port "
                     "(`provision env` prints it for a cluster)")


def ssh_options(args: argparse.Namespace, env: Mapping[str, str]) -> fleet_ssh.SshOptions:
    """The SSH settings of the global flags, else the FLEETCTL_* variables, else fleet's
    defaults."""
    def pick(name: str, variable: str) -> str | None:
        value = getattr(args, name, None)
        return value if value is not None else (env.get(variable) or None)

    strict = getattr(args, "strict_host_key_checking", None)
    if strict is None and env.get("FLEETCTL_STRICT_HOST_KEY_CHECKING"):
        try:
            strict = parse_go_bool(env["FLEETCTL_STRICT_HOST_KEY_CHECKING"])
        except ValueError as err:
            raise UsageError(f"FLEETCTL_STRICT_HOST_KEY_CHECKING: {err}") from None
    ssh_port = getattr(args, "ssh_port", None)
    if ssh_port is None and env.get("FLEETCTL_SSH_PORT"):
        try:
            ssh_port = port(env["FLEETCTL_SSH_PORT"])
        except BadValue as err:
            raise UsageError(f"FLEETCTL_SSH_PORT: {err}") from None
    return fleet_ssh.SshOptions(
        username=pick("ssh_username", "FLEETCTL_SSH_USERNAME") or fleet_ssh.DEFAULT_USERNAME,
        port=ssh_port or fleet_ssh.DEFAULT_PORT,
        strict_host_key_checking=True if strict is None else strict,
        known_hosts_file=(pick("known_hosts_file", "FLEETCTL_KNOWN_HOSTS_FILE")
                          or fleet_ssh.DEFAULT_KNOWN_HOSTS),
        config_file=pick("ssh_config", "FLEETCTL_SSH_CONFIG"),
        tunnel=pick("tunnel", "FLEETCTL_TUNNEL"),
        forward_agent=bool(getattr(args, "forward_agent", False)))


def _request_timeout(flag: float | None, env: Mapping[str, str],
                     tunnel: bool = False) -> float:
    if flag is not None:
        return flag
    text = env.get("FLEETCTL_REQUEST_TIMEOUT")
    if not text:
        return TUNNEL_REQUEST_TIMEOUT if tunnel else DEFAULT_REQUEST_TIMEOUT
    try:
        return positive_duration(text)
    except BadValue as err:
        raise UsageError(f"FLEETCTL_REQUEST_TIMEOUT: {err}") from None


def _policy(args: argparse.Namespace) -> WaitPolicy | None:
    from fleetd.fleetctl.waiting import DEFAULT_TIMEOUT, WaitPolicy

    if args.no_block:
        return None
    timeout: float | None = DEFAULT_TIMEOUT
    if args.block_timeout is not None:
        timeout = float(args.block_timeout) or None
    if args.block_attempts and args.block_timeout is None:
        timeout = None  # N attempts given alone: exactly N attempts, as in fleet
    return WaitPolicy(attempts=args.block_attempts or None, timeout=timeout)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("provision-fleetd")
    except Exception:  # not installed: running from a checkout
        return "0.0.0+unknown"


# -- the commands: argument setup and handler of each, then the table --------------------

def _units(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("units", nargs="+", metavar="UNIT")


def _one_unit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("unit", metavar="UNIT")


def _replace_option(parser: argparse.ArgumentParser) -> None:
    go_bool_flag(parser, "--replace",
                 help="replace units that exist with different content")


def _list_arguments(fields: str) -> Callable[[argparse.ArgumentParser], None]:
    return lambda parser: _list_options(parser, fields)


def _blocking_units(what: str, replace: bool = False) -> Callable[[argparse.ArgumentParser],
                                                                  None]:
    def arguments(parser: argparse.ArgumentParser) -> None:
        _units(parser)
        if replace:
            _replace_option(parser)
        _block_options(parser, what)
    return arguments


def _submit_arguments(parser: argparse.ArgumentParser) -> None:
    _units(parser)
    _replace_option(parser)


def _journal_arguments(parser: argparse.ArgumentParser) -> None:
    _one_unit(parser)
    parser.add_argument("--lines", "-n", type=non_negative_int, default=10, metavar="N",
                        help="number of recent lines to print (default 10)")
    go_bool_flag(parser, "-f", "--follow", help="keep printing new lines")


def _ssh_arguments(parser: argparse.ArgumentParser) -> None:
    go_bool_flag(parser, "-A", "--forward-agent",
                 help="forward the local ssh-agent to the machine")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--machine", metavar="ID", help="the machine with this ID (prefix)")
    which.add_argument("--unit", metavar="UNIT", help="the machine running this unit")
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="MACHINE|UNIT [COMMAND]")


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _command(module: str) -> ModuleType:
    """A command's module, imported when the command runs: each command's imports are
    its own (`start` needs the scheduler to explain a unit it cannot place, a listing
    does not), and they are most of a short command's time."""
    return importlib.import_module(f"fleetd.fleetctl.{module}")


def _list(build: str) -> Handler:
    def handler(args: argparse.Namespace, session: Session) -> None:
        from fleetd.fleetctl.tables import render

        table = getattr(_command("lists"), build)(session, args.fields)
        session.out.write(render(table, args.output, full=args.full,
                                 legend=not args.no_legend))
    return handler


def _cat(args: argparse.Namespace, session: Session) -> None:
    session.out.write(_command("inspect").cat(session, args.unit))


def _status(args: argparse.Namespace, session: Session) -> None:
    for i, text in enumerate(_command("inspect").status(session, args.units)):
        session.out.write(("\n" if i else "") + text)


def _journal(args: argparse.Namespace, session: Session) -> None:
    try:
        for chunk in _command("inspect").journal(session, args.unit, args.lines, args.follow):
            session.out.write(chunk)
            session.out.flush()
    except KeyboardInterrupt:
        if not args.follow:
            raise


def _version_command(args: argparse.Namespace, session: Session) -> None:
    raise AssertionError("run() answers `version` before connecting")  # pragma: no cover


# A handler acts on the cluster through the session and returns an exit code, or None
# for success once its output is flushed.
Handler = Callable[[argparse.Namespace, "Session"], "int | None"]


class Command(namedtuple("Command", ("help", "arguments", "handler"))):
    __slots__ = ()
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]  # the command's own arguments
    handler: Handler


# Every fleetctl command: its name (the order of `--help`), what it says, its arguments and
# what it does. A new command is one entry here.
TABLE: dict[str, Command] = {
    "list-machines": Command(
        "Enumerate the current hosts in the cluster",
        _list_arguments("machine,ip,metadata"), _list("list_machines")),
    "list-unit-files": Command(
        "List the units that exist in the cluster",
        _list_arguments("unit,hash,dstate,state,target,global,desc"),
        _list("list_unit_files")),
    "list-units": Command(
        "List the current state of units in the cluster",
        _list_arguments("unit,machine,ip,active,sub,load,hash"), _list("list_units")),
    "submit": Command(
        "Upload one or more units to the cluster without starting them", _submit_arguments,
        lambda args, session: _command("lifecycle").submit(session, args.units,
                                                            replace=args.replace)),
    "load": Command(
        "Schedule one or more units in the cluster, first submitting them if necessary",
        _blocking_units("loaded", replace=True),
        lambda args, session: _command("lifecycle").load(session, args.units, _policy(args),
                                                          replace=args.replace)),
    "start": Command(
        "Start one or more units in the cluster, first submitting and loading them if "
        "necessary", _blocking_units("launched", replace=True),
        lambda args, session: _command("lifecycle").start(session, args.units, _policy(args),
                                                           replace=args.replace)),
    "stop": Command(
        "Stop one or more units in the cluster (they stay loaded)", _blocking_units("stopped"),
        lambda args, session: _command("lifecycle").stop(session, args.units, _policy(args))),
    "unload": Command(
        "Unschedule one or more units in the cluster", _blocking_units("inactive"),
        lambda args, session: _command("lifecycle").unload(session, args.units,
                                                            _policy(args))),
    "destroy": Command(
        "Destroy one or more units in the cluster", _units,
        lambda args, session: _command("lifecycle").destroy(session, args.units)),
    "cat": Command("Print the unit file of a submitted unit", _one_unit, _cat),
    "status": Command("Print the systemd status of one or more units", _units, _status),
    "journal": Command("Print the journal of a unit", _journal_arguments, _journal),
    "ssh": Command(
        "Open a shell, or run COMMAND, on a machine of the cluster or on the machine running "
        "a unit", _ssh_arguments, lambda args, session: _ssh(args, session)),
    "version": Command("Print the version and exit", _no_arguments, _version_command),
}
COMMANDS = tuple(TABLE)


def _dispatch(args: argparse.Namespace, session: Session) -> int:
    code = TABLE[args.command].handler(args, session)
    if code is not None:
        return code
    session.out.flush()
    return EXIT_OK


def _ssh(args: argparse.Namespace, session: Session) -> int:
    words = list(args.words)
    if args.machine or args.unit:
        lookup, only = (args.machine, "machine") if args.machine else (args.unit, "unit")
    elif words and words[0] != "--":
        lookup, only, words = words[0], None, words[1:]
    else:
        raise UsageError("name one machine or unit: fleetctl ssh MACHINE|UNIT [COMMAND]",
                         command="ssh")
    if "--" in words:
        words = words[words.index("--") + 1:]
    address = _ssh_address(session, lookup, only)
    options = session.ssh or fleet_ssh.SshOptions()
    ensure_known_hosts_dir(options)
    return _command("remote").run_ssh(fleet_ssh.ssh_argv(options, address, words))


def _ssh_address(session: Session, lookup: str, only: str | None) -> str:
    from fleetd.fleetctl.targets import unit_name_of

    machines = [fleet_ssh.MachineRef(m.id, m.primary_ip) for m in session.machines().values()]
    unit = None
    if only != "machine":
        try:
            name = unit_name_of(lookup)
        except UsageError:
            name = None
        unit = session.client.unit(name) if name else None
    return fleet_ssh.resolve_target(lookup, machines, unit.machine_id if unit else None,
                                    unit is not None, bool(unit and unit.is_global), only=only)


def ensure_known_hosts_dir(options: fleet_ssh.SshOptions) -> None:
    """fleet keeps ~/.fleetctl/known_hosts; ssh does not make the directory itself."""
    if options.strict_host_key_checking:
        parent = os.path.dirname(os.path.expanduser(options.known_hosts_file))
        if parent:
            os.makedirs(parent, mode=0o700, exist_ok=True)


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
        stdout: TextIO | None = None, stderr: TextIO | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        socket_exists: Callable[[str], bool] = os.path.exists) -> int:
    """Run one fleetctl command line; returns the exit code (the testable entry point)."""
    env = os.environ if env is None else env
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    command = None
    try:
        try:
            args = parse_arguments(argv)
        except SystemExit as done:  # --help printed its text
            return int(done.code or 0)
        except UsageError as error:
            if separated := separate_bool_value(argv):
                flag, value = separated
                error.message += (f" ({flag} {value}: a bool flag takes its value after '=', "
                                  f"{flag}={value}; a bare {flag} is true)")
            raise
        command = args.command
        if args.version or command == "version":
            out.write(f"{PROG} version {_version()}\n")
            return EXIT_OK
        if command is None:
            err.write(build_parser().format_help())
            return EXIT_USAGE
        options = ssh_options(args, env)
        if options.tunnel:
            fleet_ssh.split_host_port(options.tunnel, fleet_ssh.DEFAULT_PORT)  # checked early
            ensure_known_hosts_dir(options)
        # Imported only now: `version` and `--help` need none of the client (http.client
        # and the unit-file model are most of a command's start-up).
        from fleetd.fleetctl.client import Client
        from fleetd.fleetctl.session import Session

        endpoint = resolve_endpoint(args.endpoint, env,
                                    (lambda _: True) if options.tunnel else socket_exists)
        client = Client(endpoint, _request_timeout(args.request_timeout, env,
                                                   bool(options.tunnel)),
                        tunnel=options if options.tunnel else None)
        session = Session(client, out=out, err=err, sleep=sleep, monotonic=monotonic,
                          ssh=options)
        try:
            return _dispatch(args, session)
        finally:
            client.close()
    except UsageError as error:
        if error.usage:
            err.write(error.usage)
        err.write(f"{PROG}: {error.message}\n")
        where = error.command or command
        hint = f"{PROG} {where} --help" if where else f"{PROG} --help"
        err.write(f"Run '{hint}' for usage.\n")
        return error.exit_code
    except FleetctlError as error:
        out.flush()
        err.write(error.message.rstrip("\n") + "\n")
        return error.exit_code
    except KeyboardInterrupt:
        err.write("Aborted!\n")
        return EXIT_FAILED
    except BrokenPipeError:  # `fleetctl list-units | head`: the reader has all it wants
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    if argv is not None:
        return run(argv)
    leave(run(sys.argv[1:]))


def leave(code: int) -> NoReturn:
    """End the console script once its output is out, without the interpreter's teardown:
    freeing every object and module of a listing cost it 20-40 ms, a tenth of the command,
    and nothing of ours is left to do then (no thread, no atexit, every file written and
    closed by the command itself)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # `fleetctl list-units | head`: the reader has all it wants
        pass
    except (OSError, ValueError) as err:  # stdout closed or full: say so, as Python would
        sys.stderr.write(f"{PROG}: cannot write the output: {err}\n")
        code = code or EXIT_FAILED
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
