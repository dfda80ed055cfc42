"""`provision plan` and `provision apply`: arguments, output, exit statuses.

plan: 0 when there is nothing to do; with `--detailed-exitcode` 2 when changes are pending
and 1 for any error (terraform's convention), otherwise errors exit as everywhere (2 for
what the user can fix, 1 when the operation failed).

A cluster whose nodes run in a network namespace (a local dns-srv cluster, every nspawn
cluster) has its etcd only there: both commands then run themselves again inside it
(`ip netns exec`).
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
from provision.signals import sigterm_interrupts

NETNS_ENV = "PROVISION_NETNS"


def _console():  # rich.console.Console, imported lazily
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _load(path: str):  # provision.spec.model.Cluster
    from provision.spec.build import load_cluster

    cluster, warnings = load_cluster(path)
    for problem in warnings:
        print(problem, file=sys.stderr)
    return cluster


def _namespace_of(cluster, provider: str | None = None) -> str | None:
    """The network namespace the cluster's nodes are reachable in, unless we are in it."""
    from provision.providers import get_provider

    ns = get_provider(provider or cluster.provider).namespace(cluster.name)
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
    from provision.apply import report as plan_output
    from provision.apply import run as apply
    from provision.apply.lock import current_holder, describe

    cluster = _load(args.cluster)
    ns = _namespace_of(cluster)
    if ns:
        argv = ["plan", args.cluster, "--output", args.output]
        argv += ["--prune"] * args.prune + ["--detailed-exitcode"] * args.detailed_exitcode
        return _in_namespace(ns, argv)
    session = apply.open_session(cluster, prune=args.prune, gone=_down_probe(cluster))
    try:
        holder = current_holder(session.registry)
        if holder is not None:
            print(f"note: {cluster.name} is being applied by {describe(holder)}: this plan "
                  "may be outdated when it is done", file=sys.stderr)
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


def _stdout_console():
    from rich.console import Console

    return Console(highlight=False)


# -- apply -------------------------------------------------------------------------------------

def cmd_apply(args: argparse.Namespace) -> int:
    cluster = _load(args.cluster)
    ns = _namespace_of(cluster)
    if ns:
        return _in_namespace(ns, ["apply", args.cluster, "--timeout", f"{args.timeout:g}",
                                  *["--prune"] * args.prune, *["--no-wait"] * args.no_wait])
    return run_apply(cluster, prune=args.prune, timeout=args.timeout, no_wait=args.no_wait)


def run_apply(cluster, *, prune: bool = False, timeout: float = 120.0,
              no_wait: bool = False, console=None) -> int:  # rich Console
    """Take the cluster's apply lock, plan, write and wait; 0 once converged
    (OperationFailed otherwise, UserError when the lock is held and `no_wait`)."""
    from provision.apply import report as plan_output
    from provision.apply import run as apply
    from provision.apply.lock import describe

    console = console or _console()
    deadline = time.monotonic() + timeout
    gone = _down_probe(cluster)

    def say(text: str) -> None:
        console.print(f"{cluster.name}: {text}", markup=False, highlight=False,
                      soft_wrap=True)

    with sigterm_interrupts():  # the lock is released at once, not when its lease lapses
        session = apply.open_session(cluster, prune=prune, lock=True, wait=not no_wait,
                                     deadline=deadline, report=say, gone=gone)
        try:
            assert session.lock is not None
            if session.lock.waited_for is not None:
                say(f"the apply of {describe(session.lock.waited_for, brief=True)} is "
                    "done; planning against what it left")
            if not session.plan.empty:
                for style, text in plan_output.lines(session.plan):
                    console.print(text, style=style, markup=False, soft_wrap=True)
            with _progress_bar(console) as (report, count):
                apply.apply(session, deadline=deadline, report=report, count=count,
                            gone=gone)
        finally:
            session.close()
    changes = len(session.plan.changes)
    units = len(session.desired)
    print(f"{cluster.name}: applied {changes} change{'s' if changes != 1 else ''}; "
          f"{units} declared unit{'s' if units != 1 else ''} converged")
    return 0


def _down_probe(cluster):  # Cluster -> Callable[[], bool]
    """Whether the cluster is known to be down (the provider's probe; some never know)."""
    from provision.providers import get_provider

    return get_provider(cluster.provider).known_down(cluster.name)


@contextlib.contextmanager
def _progress_bar(console):  # rich Console; yields two callables
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


def apply_after_up(cluster_path: str, timeout: float, no_wait: bool = False,
                   provider: str | None = None) -> int:
    """`provision up`'s last step when the cluster declares units."""
    cluster = _load(cluster_path)
    if not cluster.units:
        return 0
    ns = _namespace_of(cluster, provider)
    if ns:
        return _in_namespace(ns, ["apply", cluster_path, "--timeout", f"{timeout:g}",
                                  *["--no-wait"] * no_wait])
    return run_apply(cluster, timeout=timeout, no_wait=no_wait)


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
                       help="give up after this long, waiting for another apply included "
                            "(default 120)")
    apply.add_argument("--no-wait", action="store_true",
                       help="if another apply holds the cluster, exit 2 instead of waiting")
    apply.set_defaults(run=cmd_apply)
