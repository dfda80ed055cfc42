"""`provision plan` and `provision apply`: arguments, output, exit statuses.

plan: 0 when there is nothing to do; with `--detailed-exitcode` 2 when changes are pending
and 1 for any error (terraform's convention), otherwise errors exit as everywhere (2 for
what the user can fix, 1 when the operation failed).

A local cluster whose nodes run in a network namespace (dns-srv) has its etcd only there:
both commands then run themselves again inside it (`ip netns exec`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

from fleetd.argtypes import positive_duration
from provision.errors import EXIT_FAILED, OperationFailed, UserError

NETNS_ENV = "PROVISION_NETNS"


def _console():  # noqa: ANN202 - rich.console.Console, imported lazily
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _load(path: str):  # noqa: ANN202 - provision.model.Cluster
    from provision.model_build import load_cluster

    cluster, warnings = load_cluster(path)
    for problem in warnings:
        print(problem, file=sys.stderr)
    return cluster


def _namespace_of(cluster) -> str | None:  # noqa: ANN001 - provision.model.Cluster
    """The network namespace the cluster's local nodes run in, unless we are in it."""
    if cluster.provider != "local":
        return None
    from provision.providers.local import nodes, provider

    state_dir = provider.cluster_state_dir(cluster.name)
    ns = nodes.netns(state_dir) if state_dir.is_dir() else None
    if ns is None or os.environ.get(NETNS_ENV) == ns:
        return None
    return ns


def _in_namespace(ns: str, argv: list[str]) -> int:
    from provision.providers.local.control import python_path
    from provision.providers.local.dns import exec_prefix

    env = {**os.environ, NETNS_ENV: ns, "PYTHONPATH": python_path()}
    return subprocess.run([*exec_prefix(ns), sys.executable, "-m", "provision.cli", *argv],
                          env=env, check=False).returncode


# -- plan --------------------------------------------------------------------------------------

def cmd_plan(args: argparse.Namespace) -> int:
    try:
        return _plan(args)
    except (UserError, OperationFailed) as err:
        if not args.detailed_exitcode:
            raise
        lines = ([str(p) for p in err.problems] if isinstance(err, UserError)
                 else [f"provision: {err}"])
        for line in lines:
            print(line, file=sys.stderr)
        return EXIT_FAILED


def _plan(args: argparse.Namespace) -> int:
    from provision import apply, plan_output

    cluster = _load(args.cluster)
    ns = _namespace_of(cluster)
    if ns:
        argv = ["plan", args.cluster, "--output", args.output]
        argv += ["--prune"] * args.prune + ["--detailed-exitcode"] * args.detailed_exitcode
        return _in_namespace(ns, argv)
    session = apply.open_session(cluster, prune=args.prune)
    try:
        if args.output == "json":
            print(json.dumps(plan_output.as_json(session.plan), indent=2))
        else:
            console = _stdout_console()
            for style, text in plan_output.lines(session.plan):
                console.print(text, style=style, markup=False, soft_wrap=True)
    finally:
        session.close()
    if args.detailed_exitcode and not session.plan.empty:
        return 2
    return 0


def _stdout_console():  # noqa: ANN202
    from rich.console import Console

    return Console(highlight=False)


# -- apply -------------------------------------------------------------------------------------

def cmd_apply(args: argparse.Namespace) -> int:
    cluster = _load(args.cluster)
    ns = _namespace_of(cluster)
    if ns:
        return _in_namespace(ns, ["apply", args.cluster, "--timeout", f"{args.timeout:g}",
                                  *["--prune"] * args.prune])
    return run_apply(cluster, prune=args.prune, timeout=args.timeout)


def run_apply(cluster, *, prune: bool = False, timeout: float = 120.0,  # noqa: ANN001
              console=None) -> int:  # noqa: ANN001 - rich Console
    """Plan, write and wait; 0 once converged (OperationFailed otherwise)."""
    from provision import apply, plan_output

    console = console or _console()
    deadline = time.monotonic() + timeout
    session = apply.open_session(cluster, prune=prune)
    try:
        if not session.plan.empty:
            for style, text in plan_output.lines(session.plan):
                console.print(text, style=style, markup=False, soft_wrap=True)
        with _progress_bar(console) as (report, count):
            apply.apply(session, deadline=deadline, report=report, count=count)
    finally:
        session.close()
    changes = len(session.plan.changes)
    units = len(session.desired)
    print(f"{cluster.name}: applied {changes} change{'s' if changes != 1 else ''}; "
          f"{units} declared unit{'s' if units != 1 else ''} converged")
    return 0


@contextlib.contextmanager
def _progress_bar(console):  # noqa: ANN001, ANN202 - rich Console; yields two callables
    """On a terminal a live bar of converged units; otherwise plain lines."""
    def report(text: str) -> None:
        console.print(f"  {text}", style="dim", markup=False, soft_wrap=True)

    if not console.is_terminal:
        yield report, lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("  converging"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("units"), console=console, transient=True) as bar:
        task = bar.add_task("converging", total=None)

        def count(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield (lambda text: bar.console.print(f"  {text}", style="dim", markup=False,
                                              soft_wrap=True)), count


def apply_after_up(cluster_path: str, timeout: float) -> int:
    """`provision up`'s last step when the cluster declares units."""
    cluster = _load(cluster_path)
    if not cluster.units:
        return 0
    ns = _namespace_of(cluster)
    if ns:
        return _in_namespace(ns, ["apply", cluster_path, "--timeout", f"{timeout:g}"])
    return run_apply(cluster, timeout=timeout)


# -- arguments ---------------------------------------------------------------------------------

def add_commands(commands: argparse._SubParsersAction) -> None:
    plan = commands.add_parser(
        "plan", help="show what `apply` would change (declared units vs. the cluster)")
    plan.add_argument("cluster", metavar="CLUSTER.yaml")
    plan.add_argument("--prune", action="store_true",
                      help="also plan to destroy units apply created that are no longer "
                           "declared")
    plan.add_argument("--output", choices=("text", "json"), default="text")
    plan.add_argument("--detailed-exitcode", action="store_true",
                      help="exit 0 with no changes, 2 with changes pending, 1 on error")
    plan.set_defaults(run=cmd_plan)

    apply = commands.add_parser(
        "apply", help="converge the cluster's fleet units to the declared ones and wait")
    apply.add_argument("cluster", metavar="CLUSTER.yaml")
    apply.add_argument("--prune", action="store_true",
                       help="destroy units apply created that are no longer declared")
    apply.add_argument("--timeout", type=positive_duration, default=120.0, metavar="SECONDS",
                       help="give up waiting for convergence after this long (default 120)")
    apply.set_defaults(run=cmd_apply)
