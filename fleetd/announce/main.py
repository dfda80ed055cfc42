"""`fleetd announce …` arguments; usage errors exit 2 (see the package docstring)."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from fleetd import argtypes
from fleetd.announce.announcer import Announcer, Target
from fleetd.announce.checks import http_check, tcp_check
from fleetd.registry.etcd import Etcd, EtcdTLS
from fleetd.registry.keys import DEFAULT_PREFIX, Keys
from fleetd.wakeup import SignalSafeEvent

CHECK_TIMEOUT_S = 2.0


def build_parser() -> argparse.ArgumentParser:
    parser = argtypes.OneLineParser(
        prog="fleetd announce",
        description="Hold an etcd key for a service while its health check passes.")
    parser.add_argument("--unit", required=True, help="the unit being announced")
    parser.add_argument("--key", required=True, help="etcd key, e.g. /services/web/1")
    parser.add_argument("--port", required=True, type=argtypes.port)
    parser.add_argument("--check", choices=("tcp", "http"), default="tcp")
    parser.add_argument("--path", default="/", help="http check: path to GET")
    parser.add_argument("--ttl", type=argtypes.positive_int, default=30,
                        help="lease TTL in seconds: how long a dead announcer's key lingers")
    parser.add_argument("--interval", type=argtypes.positive_duration,
                        help="seconds between checks (default ttl/3)")
    parser.add_argument("--etcd-servers", required=True,
                        help="comma-separated etcd client URLs")
    for name, what in (("cafile", "CA certificate"), ("certfile", "client certificate"),
                       ("keyfile", "client key")):
        parser.add_argument(f"--etcd-{name}", default=None,
                            help=f"{what} (PEM) for etcd's mutual TLS (a path on the node)")
    parser.add_argument("--etcd-key-prefix", default=DEFAULT_PREFIX,
                        help="fleet's keyspace, to read this machine's IP")
    parser.add_argument("--machine", required=True, help="this machine's id (%%m in a unit)")
    parser.add_argument("--host", default="", help="host name to publish (%%H in a unit)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.key.startswith("/"):
        print(f"fleetd announce: --key {args.key!r} must be an absolute etcd key",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    interval = args.interval or max(0.5, args.ttl / 3)
    target = Target(args.unit, args.key, args.port, args.ttl, interval, args.machine,
                    args.host)
    timeout = min(CHECK_TIMEOUT_S, interval)
    if args.check == "http":
        check = functools.partial(_http, port=args.port, path=args.path, timeout=timeout)
    else:
        check = functools.partial(_tcp, port=args.port, timeout=timeout)
    tls_files = [args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile]
    if any(tls_files) and not all(tls_files):
        print("fleetd announce: --etcd-cafile, --etcd-certfile and --etcd-keyfile go together",
              file=sys.stderr)
        return 2
    tls = EtcdTLS(*(_node_path(p) for p in tls_files)) if all(tls_files) else None
    try:
        etcd = Etcd(args.etcd_servers.split(","), timeout=5.0, tls=tls)
    except (ValueError, OSError) as err:
        print(f"fleetd announce: {err}", file=sys.stderr)
        return 2
    stop = SignalSafeEvent()  # set by signal handlers: a threading.Event can deadlock there
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        Announcer(etcd, Keys(args.etcd_key_prefix), target, check).run(stop)
    finally:
        etcd.close()
    return 0


def _node_path(path: str) -> str:
    """A node path as a host path: under the node root a local node's units run in."""
    from fleetd.runner.process.environment import NODE_ROOT_VARIABLE  # only when TLS is used

    root = os.environ.get(NODE_ROOT_VARIABLE)
    return str(Path(root) / path.lstrip("/")) if root and path.startswith("/") else path


def _http(ip: str, *, port: int, path: str, timeout: float) -> bool:
    return http_check(ip, port, path, timeout)


def _tcp(ip: str, *, port: int, timeout: float) -> bool:
    return tcp_check(ip, port, timeout)
