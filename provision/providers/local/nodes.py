"""From a rendered cluster to node plans on disk: the I/O around the pure boot plan.

`plan_cluster` reads each node's rendered user-data and asks boot.py for its
plan; `prepare` makes the node directories (machine id kept across runs),
applies write_files inside each node root and writes `plan.json` for the
supervisor.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fleetd.config import SETTINGS as FLEET_SETTINGS
from provision.errors import Problem, UserError
from provision.files import write_atomic
from provision.providers.local import state
from provision.providers.local.boot import FileWrite, NodeBoot, NodeDirs, plan_node
from provision.providers.local.control import repo_root
from provision.providers.local.etcdbin import EtcdBinaries
from provision.providers.local.units import Tools, UnitPlan
from provision.render.manifest import MANIFEST, Manifest


def read_manifest(rendered: Path) -> Manifest:
    return Manifest.from_file(rendered / MANIFEST)


def etcd_tls(state_dir: Path, manifest: Manifest):  # EtcdTLS | None
    """The admin certificate for talking to the cluster's etcd, None if it runs plain http."""
    if not manifest.tls:
        return None
    from provision.pki import PKI_DIR, admin_tls

    return admin_tls(state_dir / PKI_DIR)


def node_dirs(state_dir: Path, name: str) -> NodeDirs:
    return NodeDirs(state_dir / state.NODES / name)


def plan_cluster(state_dir: Path, manifest: Manifest, binaries: EtcdBinaries) -> list[NodeBoot]:
    rendered = state_dir / state.RENDERED
    tools = Tools(etcd=binaries.etcd, etcdctl=binaries.etcdctl, python=sys.executable,
                  pythonpath=str(repo_root()))
    settings = frozenset(FLEET_SETTINGS)
    boots = []
    for node in manifest.nodes:
        path = rendered / node.user_data
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise UserError([Problem(str(path), None, None, f"cannot read: {err.strerror}")]
                            ) from None
        boots.append(plan_node(text, source=str(path), node=node, manifest=manifest,
                               dirs=node_dirs(state_dir, node.name), tools=tools,
                               fleet_settings=settings,
                               api_socket_flag="api_socket" in settings))
    return boots


def machine_id(dirs: NodeDirs) -> str:
    """The node's machine id: kept in fleetd's state dir (where fleetd reads it) across runs."""
    from fleetd.daemon import machine_id as fleetd_machine_id

    return fleetd_machine_id(dirs.fleet)


def write_into_root(root: Path, item: FileWrite) -> None:
    """Write one file under the node root; refuse anything that resolves outside it."""
    real_root = root.resolve()
    target = real_root / item.path.lstrip("/")
    for _ in range(2):  # before creating directories, and again after (a racing symlink)
        parent = target.parent.resolve()
        if parent != real_root and real_root not in parent.parents:
            raise UserError(f"write_files: {item.path} resolves to {parent / target.name}, "
                            f"outside the node root {real_root}; refusing it")
        parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{target.name}.provision-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            view = memoryview(item.content)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, item.mode)
        finally:
            os.close(fd)
        os.replace(tmp, parent / target.name)  # replaces a symlink itself, never its target
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(parent / target.name)) from None


def prepare_node(boot: NodeBoot) -> str:
    dirs = boot.dirs
    for path in (dirs.root / "etc", dirs.system, dirs.fleet):
        path.mkdir(parents=True, exist_ok=True)
    # The node's unit files and their logs carry etcd's configuration (etcd logs its
    # discovery URL at start): its owner's alone.
    os.chmod(dirs.system, 0o700)
    mid = machine_id(dirs)
    write_atomic(dirs.root / "etc" / "machine-id", mid + "\n")
    write_atomic(dirs.root / "etc" / "hostname", boot.hostname + "\n")
    for item in boot.files:
        write_into_root(dirs.root, item)
    return mid


@dataclass(frozen=True)
class Shared:
    """What a cluster runs besides its nodes (dns-srv: a network namespace and a DNS server)."""

    netns: str | None = None
    units: tuple[UnitPlan, ...] = ()
    wait_tcp: tuple[str, ...] = ()  # host:port the shared units must answer on first


def prepare(state_dir: Path, cluster: str, boots: list[NodeBoot],
            shared: Shared = Shared(),  # frozen: one shared default is safe
            binaries: EtcdBinaries | None = None) -> dict[str, str]:
    """Node directories, files and plan.json; node name -> machine id."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = dict(zip([b.name for b in boots], pool.map(prepare_node, boots), strict=True))
    (state_dir / state.SHARED / "root").mkdir(parents=True, exist_ok=True)
    etcd = None if binaries is None else {
        "etcd": binaries.etcd, "etcdctl": binaries.etcdctl, "version": binaries.version_text,
        "source": binaries.source}
    plan = {"cluster": cluster, "etcd_binary": etcd, "netns": shared.netns,
            "log_limits": log_limits(),
            "wait_tcp": list(shared.wait_tcp),
            "shared_units": [{"name": u.name, "text": u.text, "start": u.start}
                             for u in shared.units],
            "nodes": [{
        "name": b.name, "hostname": b.hostname, "ip": b.ip, "role": b.role,
        "dir": str(b.dirs.base), "machine_id": ids[b.name], "env": dict(b.env),
        "etcd_url": b.etcd_url, "peer_url": b.peer_url,
        "units": [{"name": u.name, "text": u.text, "start": u.start} for u in b.units],
    } for b in boots]}
    state.write_plan(state_dir, plan)
    return ids


LOG_MAX_ENV = "PROVISION_LOG_MAX"
LOG_KEEP_ENV = "PROVISION_LOG_KEEP"
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def log_limits(environ: dict[str, str] | None = None) -> dict[str, int]:
    """Where node logs rotate: $PROVISION_LOG_MAX (bytes; k, M, G suffixes; default 10M)
    and $PROVISION_LOG_KEEP (old files kept, default 3)."""
    environ = dict(os.environ) if environ is None else environ
    max_text = environ.get(LOG_MAX_ENV, "").strip() or "10M"
    keep_text = environ.get(LOG_KEEP_ENV, "").strip() or "3"
    number, unit = max_text.rstrip("kKmMgGbB"), max_text[len(max_text.rstrip("kKmMgGbB")):]
    unit = unit.lower().rstrip("b")
    try:
        max_bytes = int(number) * _UNITS[unit]
        keep = int(keep_text)
    except (ValueError, KeyError):
        max_bytes, keep = 0, -1
    if max_bytes < 4096 or not 0 <= keep <= 100:
        raise UserError(f"${LOG_MAX_ENV}={max_text!r} / ${LOG_KEEP_ENV}={keep_text!r}: node "
                        "logs rotate at a size of at least 4096 bytes (e.g. 10M) and keep 0 to "
                        "100 old files")
    return {"max_bytes": max_bytes, "keep": keep}


def machine_ids(state_dir: Path) -> dict[str, str]:
    plan = state.read_json(state_dir / state.PLAN) or {}
    return {n["name"]: n["machine_id"] for n in plan.get("nodes", [])}


def netns(state_dir: Path) -> str | None:
    return (state.read_json(state_dir / state.PLAN) or {}).get("netns")
