"""`provision` command line: parse arguments, run a command, turn errors into exit codes.

Commands return an exit status or raise; only `main` prints errors. A
`UserError` (bad input) prints its problems, one line each, and exits 2; so does a
write the disk refused (full, read-only: the path and the cause); an
`OperationFailed` exits 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fleetd.argtypes import OneLineParser
from provision import __version__
from provision.errors import EXIT_FAILED, EXIT_USAGE, OperationFailed, Problem, UserError


def _cmd_validate(args: argparse.Namespace) -> int:
    if args.user_data:
        return _validate_user_data(args.files, strict=args.strict)
    from provision.spec.build import load_cluster

    problems: list[Problem] = []
    summaries = []
    for file in args.files:
        try:
            cluster, warnings = load_cluster(file)
        except UserError as err:
            problems.extend(err.problems)
            continue
        problems.extend(warnings)
        summaries.append(f"{file}: valid: {_summary(cluster)}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if any(p.severity == "error" for p in problems) or (args.strict and problems):
        return EXIT_USAGE
    for line in summaries:
        print(line)
    return 0


def _validate_user_data(files: Sequence[str], *, strict: bool = False) -> int:
    from provision.userdata import validate_user_data

    failed = False
    for file in files:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            print(Problem(file, None, None, f"cannot read: {err}"), file=sys.stderr)
            failed = True
            continue
        problems = validate_user_data(text, file)
        for problem in problems:
            print(problem, file=sys.stderr)
        if any(p.severity == "error" for p in problems) or (strict and problems):
            failed = True
        elif not problems:
            print(f"{file}: valid cloud-config")
        else:
            print(f"{file}: valid cloud-config ({_count(problems)})")
    return EXIT_USAGE if failed else 0


def _count(problems: Sequence[Problem]) -> str:
    parts = []
    for severity, word in (("warning", "warning"), ("info", "note")):
        n = sum(p.severity == severity for p in problems)
        if n:
            parts.append(f"{n} {word}{'s' if n > 1 else ''}")
    return ", ".join(parts)


def _summary(cluster) -> str:  # Cluster; imported lazily
    members = len(cluster.members)
    others = len(cluster.nodes) - members
    units = sum(len(u.unit_names) for u in cluster.units)
    return (f"{len(cluster.nodes)} nodes ({members} etcd members, {others} other), "
            f"{cluster.etcd.discovery.mode} discovery, provider {cluster.provider}, "
            f"{units} declared units")


def _cmd_render(args: argparse.Namespace) -> int:
    from provision.render.cluster import render_to

    rendered = render_to(args.cluster, Path(args.output) if args.output else None,
                         new_token=args.new_token, substitute=args.substitute,
                         pki_dir=args.pki_dir)
    cluster, files, out_dir = rendered.cluster, rendered.files, rendered.out_dir
    others = ", ".join(f.name for f in files[len(cluster.nodes):])
    first, last = cluster.nodes[0].user_data_name, cluster.nodes[-1].user_data_name
    span = first if first == last else f"{first} … {last}"
    print(f"rendered {cluster.name}: {len(cluster.nodes)} nodes to {out_dir}/ ({span}, {others})")
    return 0


USER_DATA_EXIT_STATUS = """\
problems print as FILE:LINE:COL: [warning: |info: ]MESSAGE, at coreos-cloudinit's levels:
  error    does not parse, no #cloud-config header, a value its `valid` pattern refuses,
           write_files content that does not decode, a file under /usr
  warning  unknown key, wrong type, deprecated key
  info     write_files under coreos
exit status:
  0  no errors (warnings and notes are printed, and pass)
  2  an error in any file (with --strict: any problem at all); also bad usage
A cluster definition's problems follow the same rule; they include what its rendered
user-data would be refused or warned for.
coreos-cloudinit -validate exits 1 for any finding, warnings and info included;
provision exits 2 for what you must fix, like every other user error, and lets
--strict make warnings fail as well."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="provision",
        description="Declare a cluster in YAML, render each node's cloud-config, bring it up.")
    parser.add_argument("--version", action="version", version=f"provision {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    validate = commands.add_parser(
        "validate", help="check cluster definitions (or cloud-config files with --user-data)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check cluster definitions, or with --user-data rendered cloud-configs\n"
                    "(user-data-N) the way coreos-cloudinit v1.13.0's validator does.",
        epilog=USER_DATA_EXIT_STATUS)
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--user-data", action="store_true",
                          help="the files are rendered cloud-configs (user-data-N), not "
                               "cluster definitions")
    validate.add_argument("--strict", action="store_true",
                          help="warnings and notes fail too (exit 2), as every finding does "
                               "in coreos-cloudinit -validate")
    validate.set_defaults(run=_cmd_validate)

    render = commands.add_parser("render", help="write user-data-1..N and a node manifest")
    render.add_argument("cluster", metavar="CLUSTER.yaml")
    render.add_argument("-o", "--output", metavar="DIR",
                        help="output directory (default: out/<cluster name>)")
    render.add_argument("--substitute", action="store_true",
                        help="write each node's IPs instead of $private_ipv4/$public_ipv4")
    render.add_argument("--new-token", action="store_true",
                        help="request a fresh discovery token instead of reusing the cached one")
    render.add_argument("--pki-dir", metavar="DIR",
                        help="keep the cluster's CA and certificates here (default: with the "
                             "cluster's state, $PROVISION_STATE/<cluster>/pki)")
    render.set_defaults(run=_cmd_render)

    from provision.box import cli as box_cli
    from provision.cli import apply as apply_cli
    from provision.cli import certs as certs_cli
    from provision.cli import lifecycle as lifecycle_cli
    from provision.image import cli as image_cli
    from provision.machine import cli as machine_cli

    lifecycle_cli.add_commands(commands)
    apply_cli.add_commands(commands)
    certs_cli.add_commands(commands)
    machine_cli.add_commands(commands)
    image_cli.add_commands(commands)
    box_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UserError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return err.exit_code
    except OperationFailed as err:
        print(f"provision: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("provision: aborted", file=sys.stderr)
        return 130
    except OSError as err:
        # A full or read-only disk under any command: one line naming the path, not a bug.
        from provision.files import disk_error, is_disk_error

        if not is_disk_error(err):
            raise
        for problem in disk_error(err).problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        # Every command turns an unreachable etcd into its own words; this is the backstop
        # that keeps one it did not foresee to one line as well.
        from fleetd.registry.etcd import RegistryUnavailable

        if not isinstance(err, RegistryUnavailable):
            raise
        print(f"provision: {err}; is the cluster up? (`provision status`)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
