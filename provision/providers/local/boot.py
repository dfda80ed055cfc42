"""How a local node boots from its own user-data, as a plan (pure: text in, values out).

`plan_node` does what coreos-cloudinit does on a CoreOS machine, but answers
with data instead of acting: substitute `$private_ipv4` / `$public_ipv4` with
the node IP, list the `write_files` to apply under the node root, translate the
`etcd2` section into an etcd 3.5 command line (or an etcd gateway for
`proxy: on`), the `fleet` section into a fleetd command line, and the `units`
into unit files for the node's process runner. The supervisor carries it out.

Local differences, each reported as a note: listeners on 0.0.0.0 or loopback
names are narrowed to the node IP (every node has its own loopback address),
data and state live in the node directory, every etcd serves the v2 API too
(flannel's `etcdctl set` needs it), and flanneld itself cannot run here.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from fleetd.registry.keys import DEFAULT_PREFIX
from provision.errors import Problem, UserError
from provision.providers.local.units import (
    ETCD_UNIT,
    FLEET_UNIT,
    Tools,
    UnitPlan,
    node_units,
)
from provision.render.manifest import Manifest, ManifestEtcd, ManifestNode
from provision.userdata.services import (
    ETCD_RENAMED,
    decode_content,
    fleet_settings,
    setting_text,
)
from provision.userdata.substitution import (
    PRIVATE_IPV4,
    PRIVATE_IPV6,
    PUBLIC_IPV4,
    PUBLIC_IPV6,
    boot_substitute,
)

# etcd 3.5 flags an etcd2 section may carry through unchanged (`etcd --help`).
ETCD_FLAGS = frozenset("""
name snapshot-count heartbeat-interval election-timeout initial-election-tick-advance
listen-peer-urls listen-client-urls max-snapshots max-wals quota-backend-bytes
backend-bbolt-freelist-type backend-batch-interval backend-batch-limit max-txn-ops
max-request-bytes grpc-keepalive-min-time grpc-keepalive-interval grpc-keepalive-timeout
socket-reuse-port socket-reuse-address initial-advertise-peer-urls initial-cluster
initial-cluster-state initial-cluster-token advertise-client-urls discovery
discovery-fallback discovery-proxy discovery-srv discovery-srv-name strict-reconfig-check
pre-vote auto-compaction-retention auto-compaction-mode enable-v2 v2-deprecation cert-file
key-file client-cert-auth client-crl-file client-cert-allowed-hostname trusted-ca-file
auto-tls peer-cert-file peer-key-file peer-client-cert-auth peer-trusted-ca-file
peer-cert-allowed-cn peer-cert-allowed-hostname peer-auto-tls self-signed-cert-validity
peer-crl-file cipher-suites cors host-whitelist auth-token bcrypt-cost auth-token-ttl
enable-pprof metrics listen-metrics-urls logger log-outputs log-level
experimental-initial-corrupt-check experimental-corrupt-check-time
experimental-enable-lease-checkpoint experimental-compaction-batch-limit
experimental-watch-progress-notify-interval experimental-warning-apply-duration
""".split())
URL_FLAGS = ("listen-client-urls", "listen-peer-urls", "advertise-client-urls",
             "initial-advertise-peer-urls", "listen-metrics-urls")
NARROWED_HOSTS = ("0.0.0.0", "::", "[::]", "", "localhost", "127.0.0.1")
OWN_PATHS = ("data-dir", "wal-dir")
# Files a node's etcd reads: node paths, found under the node root here.
NODE_FILE_FLAGS = ("cert-file", "key-file", "trusted-ca-file", "client-crl-file",
                   "peer-cert-file", "peer-key-file", "peer-trusted-ca-file", "peer-crl-file")
GATEWAY_RETRY = "1s"


@dataclass(frozen=True)
class NodeDirs:
    """Where one node lives on this host."""

    base: Path

    @property
    def root(self) -> Path:  # stands for the node's `/`: write_files land here
        return self.base / "root"

    @property
    def etcd(self) -> Path:
        return self.base / "etcd"

    @property
    def fleet(self) -> Path:  # fleetd's state: machine-id, its units, logs, API socket
        return self.base / "fleet"

    @property
    def system(self) -> Path:  # the supervisor's runner for this node: units/, logs/
        return self.base / "system"

    def unit_log(self, unit: str) -> Path:
        return self.system / "logs" / f"{unit}.log"


@dataclass(frozen=True)
class FileWrite:
    path: str  # absolute path on the node, e.g. /etc/environment
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class NodeBoot:
    name: str
    hostname: str
    ip: str
    role: str  # etcd-member | etcd-proxy | etcd-discovery
    dirs: NodeDirs
    files: tuple[FileWrite, ...]
    etcd_argv: tuple[str, ...]
    etcd_url: str  # where this node's etcd (or gateway) answers clients
    fleetd_argv: tuple[str, ...]
    fleet_etcd_servers: tuple[str, ...]
    fleet_prefix: str
    api_socket: str
    units: tuple[UnitPlan, ...]  # etcd2 and fleet first
    env: tuple[tuple[str, str], ...]  # what node units start from (ETCDCTL_*)
    notes: tuple[str, ...]

    @property
    def started_units(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.units if u.start)

    @property
    def peer_url(self) -> str | None:
        """The peer URL this node's etcd member advertises (None for a gateway)."""
        for arg in self.etcd_argv:
            if arg.startswith("--initial-advertise-peer-urls="):
                return arg.partition("=")[2].split(",")[0]
        return None

    @property
    def member_marker(self) -> Path:
        """Written once this node's etcd has served as a member with data: its data going
        missing later is then a lost member, not a first boot."""
        return self.dirs.base / "etcd-member.json"

    @property
    def node_units(self) -> tuple[str, ...]:
        """Units started besides etcd and fleet (the "units" health column)."""
        return tuple(n for n in self.started_units if n not in (ETCD_UNIT, FLEET_UNIT))


def substitute(text: str, ip: str) -> str:
    """coreos-cloudinit's boot substitution, escapes included; a local node has no IPv6."""
    return boot_substitute(text, {PRIVATE_IPV4: ip, PUBLIC_IPV4: ip,
                                  PRIVATE_IPV6: "", PUBLIC_IPV6: ""})


def plan_node(user_data: str, *, source: str, node: ManifestNode, manifest: Manifest,
              dirs: NodeDirs, tools: Tools, fleet_settings: frozenset[str],
              api_socket_flag: bool = False) -> NodeBoot:
    """The boot plan of one node; UserError (naming `source`) when it cannot boot locally."""
    problems: list[str] = []
    notes: list[str] = []
    ip = node.ip
    try:
        config = yaml.safe_load(substitute(user_data, ip))
    except yaml.YAMLError as err:
        raise _error(source, f"not valid YAML: {err}") from None
    if not isinstance(config, dict) or not isinstance(config.get("coreos"), dict):
        raise _error(source, "no `coreos` section: not a rendered user-data file")
    coreos = config["coreos"]
    etcd2 = coreos.get("etcd2")
    if not isinstance(etcd2, dict):
        raise _error(source, "no `coreos.etcd2` section: the node cannot start etcd")
    role = node.etcd_role
    etcd = manifest.etcd
    etcd_argv, etcd_url = etcd_command(etcd2, ip=ip, role=role, data_dir=dirs.etcd,
                                       tools=tools, etcd=etcd, notes=notes, root=dirs.root)
    fleet = coreos.get("fleet") if isinstance(coreos.get("fleet"), dict) else {}
    fleet_argv, servers, prefix = fleetd_command(fleet, dirs=dirs, tools=tools,
                                                 settings=fleet_settings,
                                                 api_socket_flag=api_socket_flag, notes=notes)
    files = tuple(_write_file(entry, i, problems) for i, entry in
                  enumerate(config.get("write_files") or []))
    units = node_units(coreos.get("units") or [], etcd_argv=etcd_argv, fleetd_argv=fleet_argv,
                       tools=tools, node_name=node.name, notes=notes, problems=problems)
    if problems:
        raise UserError([Problem(source, None, None, p) for p in problems])
    flannel = coreos.get("flannel") if isinstance(coreos.get("flannel"), dict) else {}
    endpoints = flannel.get("etcd-endpoints") or etcd_url
    env = (("ETCDCTL_API", "2"), ("ETCDCTL_ENDPOINTS", str(endpoints)),
           ("ETCDCTL_PEERS", str(endpoints)))
    client = flannel if flannel.get("etcd-cafile") else fleet
    if client.get("etcd-cafile"):  # the node's client certificate, for `etcdctl set`
        env += tuple((name, node_path(dirs.root, str(client.get(key) or "")))
                     for name, key in (("ETCDCTL_CA_FILE", "etcd-cafile"),
                                       ("ETCDCTL_CERT_FILE", "etcd-certfile"),
                                       ("ETCDCTL_KEY_FILE", "etcd-keyfile")))
    return NodeBoot(
        name=node.name, hostname=str(config.get("hostname") or node.name), ip=ip,
        role=role, dirs=dirs, files=tuple(f for f in files if f is not None),
        etcd_argv=etcd_argv, etcd_url=etcd_url, fleetd_argv=fleet_argv,
        fleet_etcd_servers=servers, fleet_prefix=prefix,
        api_socket=str(dirs.fleet / "fleet.sock"), units=units, env=env,
        notes=tuple(dict.fromkeys(notes)))


def _error(source: str, message: str) -> UserError:
    return UserError([Problem(source, None, None, message)])


# -- etcd ------------------------------------------------------------------------------------------

def narrow_urls(value: str, ip: str) -> str:
    """Listeners on every address or on loopback names become the node IP (deduplicated)."""
    out: list[str] = []
    for url in (u.strip() for u in str(value).split(",")):
        if not url:
            continue
        parts = urlsplit(url)
        if parts.hostname is None or parts.hostname in NARROWED_HOSTS or \
                f"[{parts.hostname}]" in NARROWED_HOSTS:
            port = f":{parts.port}" if parts.port else ""
            url = urlunsplit((parts.scheme, f"{ip}{port}", parts.path, parts.query,
                              parts.fragment))
        if url not in out:
            out.append(url)
    return ",".join(out)


def _proxy_on(value: object) -> bool:
    return value is True or str(value).lower() in ("on", "readonly", "true")


def node_path(root: Path | None, path: str) -> str:
    """A node path (/etc/ssl/etcd/ca.pem) as a path on this host, under the node root."""
    if root is None or not path.startswith("/"):
        return path
    return str(root / path.lstrip("/"))


def etcd_command(section: Mapping, *, ip: str, role: str, data_dir: Path, tools: Tools,
                 etcd: ManifestEtcd, notes: list[str], root: Path | None = None
                 ) -> tuple[tuple[str, ...], str]:
    """(argv, client URL) of the node's etcd: a member, the discovery etcd or a gateway."""
    client_port, peer_port = etcd.client_port, etcd.peer_port
    if _proxy_on(section.get("proxy")) or role == "etcd-proxy":
        listen = narrow_urls(section.get("listen-client-urls") or f"http://{ip}:{client_port}",
                             ip).split(",")[0]
        parts = urlsplit(listen)
        address = f"{parts.hostname}:{parts.port or client_port}"
        members = ",".join(urlsplit(u).netloc for u in etcd.endpoints)
        notes.append("etcd proxies run as `etcd gateway` (etcd 3 has no v2 proxy)")
        # The gateway gives up on an endpoint for --retry-delay (default 1m) after one
        # failed dial; members still starting must not cost a minute. It forwards TCP, so
        # TLS passes through to the members (whose certificates name this address).
        return ((tools.etcd, "gateway", "start", "--listen-addr", address,
                 "--endpoints", members, "--retry-delay", GATEWAY_RETRY),
                f"{parts.scheme or 'http'}://{address}")
    flags: dict[str, str] = {}
    for key, value in section.items():
        key = ETCD_RENAMED.get(str(key), str(key))
        if key == "proxy" or key.startswith("proxy-"):
            continue
        if key in OWN_PATHS:
            notes.append(f"etcd2 `{key}` is replaced by the node directory")
            continue
        if key not in ETCD_FLAGS:
            notes.append(f"etcd2 `{key}` has no etcd 3.5 flag; left out")
            continue
        text = setting_text(value)
        if key in NODE_FILE_FLAGS:
            text = node_path(root, text)
        flags[key] = narrow_urls(text, ip) if key in URL_FLAGS else text
    flags.setdefault("listen-client-urls", f"http://{ip}:{client_port}")
    flags.setdefault("advertise-client-urls", flags["listen-client-urls"].split(",")[0])
    # etcd's defaults bind localhost:2380 and name the cluster `default`: both clash
    # between nodes of one host, so a node without peer settings gets its own.
    flags.setdefault("listen-peer-urls", f"http://{ip}:{peer_port}")
    flags.setdefault("initial-advertise-peer-urls", flags["listen-peer-urls"].split(",")[0])
    if role == "etcd-discovery" or not {"initial-cluster", "discovery", "discovery-srv"} & set(
            flags):
        name = flags.get("name", "default")
        flags.setdefault("initial-cluster",
                         f"{name}={flags['initial-advertise-peer-urls'].split(',')[0]}")
    flags["data-dir"] = str(data_dir)
    flags["enable-v2"] = "true"
    argv = [tools.etcd] + [f"--{key}={value}" for key, value in flags.items()]
    client = _client_url(flags["advertise-client-urls"], flags["listen-client-urls"], ip)
    return tuple(argv), client


def _client_url(advertised: str, listened: str, ip: str) -> str:
    for url in (advertised.split(",") + listened.split(",")):
        if urlsplit(url).hostname == ip:
            return url.rstrip("/")
    return listened.split(",")[0].rstrip("/")


# -- fleet -----------------------------------------------------------------------------------------

def fleetd_command(section: Mapping, *, dirs: NodeDirs, tools: Tools,
                   settings: frozenset[str], api_socket_flag: bool, notes: list[str]
                   ) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(argv, etcd servers, key prefix) of the node's fleetd."""
    argv = [tools.python, "-m", "fleetd.cli", "--state-dir", str(dirs.fleet),
            "--root-dir", str(dirs.root)]
    own = [key for key in section
           if str(key).replace("-", "_") in ("state_dir", "root_dir", "api_socket")]
    notes += [f"fleet `{key}` is replaced by the node directory" for key in own]
    given = fleet_settings({k: v for k, v in section.items() if k not in own}, settings, notes)
    given.setdefault("verbosity", "1")
    if given.get("runner", "process") != "process":
        notes.append(f"fleet `runner: {given['runner']}` cannot drive this host's systemd for "
                     "a local node; its units run as processes")
    given["runner"] = "process"
    given.pop("units_directory", None)
    for name, value in given.items():
        argv += [f"--{name.replace('_', '-')}", value]
    if api_socket_flag:
        argv += ["--api-socket", str(dirs.fleet / "fleet.sock")]
    servers = tuple(s.strip() for s in given.get("etcd_servers", "http://127.0.0.1:2379")
                    .split(",") if s.strip())
    prefix = given.get("etcd_key_prefix", DEFAULT_PREFIX)
    return tuple(argv), servers, prefix if prefix.endswith("/") else prefix + "/"


# -- write_files -----------------------------------------------------------------------------------

def _write_file(entry: object, index: int, problems: list[str]) -> FileWrite | None:
    where = f"write_files[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        problems.append(f"{where}: needs a `path`")
        return None
    path = entry["path"]
    if not path.startswith("/"):
        problems.append(f"{where}: path {path!r} is not absolute")
        return None
    if ".." in path.split("/"):
        problems.append(f"{where}: path {path!r} contains `..`; refusing a path that could "
                        "leave the node root")
        return None
    try:
        mode = _mode(entry.get("permissions"))
    except ValueError:
        problems.append(f"{where}: permissions {entry.get('permissions')!r} is not an octal "
                        "mode such as \"0644\"")
        return None
    try:
        content = decode_content(str(entry.get("content") or ""), entry.get("encoding"))
    except ValueError as err:
        problems.append(f"{where} ({path}): {err}")
        return None
    return FileWrite(posixpath.normpath(path), content, mode)


def _mode(value: object) -> int:
    if value is None:
        return 0o644
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML reads 0644 (unquoted) as octal in 1.1 and some writers emit the decimal value.
        mode = value
    else:
        mode = int(str(value).strip(), 8)
    if not 0 <= mode <= 0o7777:
        raise ValueError(value)
    return mode
