"""`provision cloudinit --from-file PATH`: coreos-cloudinit's job on this machine.

Prints one line per change (stdout), warnings (stderr), and exits 0 (applied, or
nothing to change), 2 (the file is refused, or not root: nothing changed) or 1 (an
action failed on the machine).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from provision.errors import Problem, UserError
from provision.userdata.substitution import NAMES
from provision.yamlmarks import MAX_BYTES

DEFAULT_ENVIRONMENT_FILE = "/etc/environment"
# Stand-ins for --validate when the machine's addresses are unknown (RFC 5737 / 3849).
EXAMPLE_ADDRESSES = {"private_ipv4": "192.0.2.10", "public_ipv4": "192.0.2.10",
                     "private_ipv6": "2001:db8::10", "public_ipv6": "2001:db8::10"}


def read_user_data(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as err:
        raise UserError([Problem(path, None, None, f"cannot read: {err.strerror}")]) from None
    if len(raw) > MAX_BYTES:
        raise UserError([Problem(path, None, None, f"too large (more than {MAX_BYTES // 2**20} "
                                                   "MiB); that is no user-data")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError([Problem(path, None, None, f"not UTF-8 text (byte {err.start}); "
                                                   "save it as UTF-8")]) from None


def addresses_from(args: argparse.Namespace) -> dict[str, str]:
    from provision.machine.addresses import machine_addresses, parse_environment_file

    env_file: dict[str, str] = {}
    try:
        env_file = parse_environment_file(Path(args.environment_file).read_text())
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{args.environment_file}: cannot read: "
                        f"{getattr(err, 'strerror', None) or err}") from None
    flags = {name: getattr(args, name) for name in NAMES}
    return machine_addresses(flags, os.environ, env_file, file_name=args.environment_file)


def _cmd_cloudinit(args: argparse.Namespace) -> int:
    from provision.machine.applier import apply_user_data, is_root

    if not args.validate and not is_root():
        raise UserError([Problem("provision cloudinit", None, None,
                                 f"must run as root (you are uid {os.geteuid()}): it writes "
                                 "system files, adds users and drives systemd; --validate "
                                 "only checks the file")])
    text = read_user_data(args.from_file)
    addresses = addresses_from(args)
    if args.validate:
        return _validate(text, args.from_file, {**EXAMPLE_ADDRESSES, **addresses})
    done = apply_user_data(text, args.from_file, addresses, say=print,
                           warn=lambda line: print(f"warning: {line}", file=sys.stderr),
                           dry_run=args.dry_run)
    count = len(done.actions)
    if not count:
        print(f"{args.from_file}: nothing to change")
    elif not args.dry_run:
        print(f"{args.from_file}: applied {count} change{'s' if count != 1 else ''}")
    return 0


def _validate(text: str, source: str, addresses: dict[str, str]) -> int:
    from provision.machine.config import parse_machine_config
    from provision.machine.state import machine_facts

    config = parse_machine_config(text, source, addresses, machine_facts())
    for note in config.notes:
        print(f"warning: {note}", file=sys.stderr)
    print(f"{source}: valid cloud-config; {len(config.files)} files, {len(config.users)} "
          f"users, {len(config.units)} units")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    cloudinit = commands.add_parser(
        "cloudinit", help="apply a user-data file to this machine, as coreos-cloudinit did "
                          "(root)")
    cloudinit.add_argument("--from-file", "-from-file", required=True, metavar="PATH",
                           help="the user-data (a #cloud-config file)")
    cloudinit.add_argument("--validate", "-validate", action="store_true",
                           help="only check the file (no root needed); change nothing")
    cloudinit.add_argument("--dry-run", action="store_true",
                           help="print what would change on this machine; change nothing")
    for name in NAMES:
        cloudinit.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="IP",
                               help=f"this machine's address for ${name}")
    cloudinit.add_argument("--environment-file", default=DEFAULT_ENVIRONMENT_FILE,
                           metavar="PATH",
                           help="read COREOS_PRIVATE_IPV4 / COREOS_PUBLIC_IPV4 from it "
                                f"(default {DEFAULT_ENVIRONMENT_FILE})")
    cloudinit.set_defaults(run=_cmd_cloudinit)
