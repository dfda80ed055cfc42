"""Build the typed `Cluster` from a structurally valid cluster document.

This is the second validation pass: rules that span fields (names, IPs,
membership, discovery mode) and the declared units. It collects every problem
before raising, so one run reports them all. Pure apart from reading the unit
files a definition names (a small, explicit edge: `read_text`).
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from provision.errors import Problem, UserError, did_you_mean
from provision.spec.discovery import DEFAULT_MODE, MODES, DiscoveryMode, modes_reading
from provision.spec.discovery.base import HTTP_URL
from provision.spec.model import (
    LXC_BOX,
    Cluster,
    Discovery,
    DropIn,
    EtcdRole,
    EtcdSpec,
    FlannelSpec,
    FleetSpec,
    Node,
    NodeUnit,
    VagrantSettings,
    WriteFile,
    dashed,
)
from provision.spec.schema import check_structure
from provision.spec.units import build_unit_sets
from provision.userdata.sections import check_section
from provision.userdata.write_files import (
    UndecodableContent,
    decode_content,
    gzip_body_problem,
    on_read_only_usr,
)
from provision.yamlmarks import MarkedDocument, dotted, load_yaml_file

ReadText = Callable[[Path], str]


def load_cluster(path: str | Path) -> tuple[Cluster, list[Problem]]:
    """Load, check and build a cluster file: `(cluster, warnings)` or `UserError`."""
    doc = load_yaml_file(path)
    return build_cluster(doc)


def build_cluster(doc: MarkedDocument, read_text: ReadText | None = None
                  ) -> tuple[Cluster, list[Problem]]:
    problems = check_structure(doc)
    if problems:
        raise UserError(problems)
    builder = _Builder(doc, read_text or _read_unit_file)
    cluster = builder.build()
    errors = [p for p in builder.problems if p.severity == "error"]
    if errors or cluster is None:
        # Warnings too: one run reports everything to fix.
        raise UserError(builder.problems or [doc.problem((), "invalid cluster definition")])
    # Top-level write_files are built once per node: report each finding once.
    warnings = dict.fromkeys(p for p in builder.problems if p.severity != "error")
    return cluster, sorted(warnings, key=lambda p: (p.line or 0, p.col or 0, p.message))


def _read_unit_file(path: Path) -> str:
    with path.open("rb") as handle:
        raw = handle.read(1024 * 1024 + 1)
    if len(raw) > 1024 * 1024:
        raise ValueError("unit file is larger than 1 MiB")
    return raw.decode("utf-8")


class _Builder:
    def __init__(self, doc: MarkedDocument, read_text: ReadText) -> None:
        self.doc = doc
        self.data: dict = doc.data
        self.read_text = read_text
        self.problems: list[Problem] = []

    def error(self, path: tuple[Hashable, ...], message: str, *, key: bool = False) -> None:
        self.problems.append(self.doc.problem(path, message, key=key))

    def warn(self, path: tuple[Hashable, ...], message: str) -> None:
        self.problems.append(self.doc.problem(path, message, severity="warning"))

    # -- top level ---------------------------------------------------------------------------

    def build(self) -> Cluster | None:
        d = self.data
        provider = d.get("provider", "local")
        network, start = self._network(provider)
        vagrant = _vagrant(d.get("vagrant", {}), _vagrant_defaults(d.get("vagrant", {})))
        fleet_meta = _metadata(d.get("fleet", {}).get("metadata", {}))
        nodes = self._nodes(network, start, vagrant, fleet_meta) if network else []
        names = [n["name"] for n in nodes]
        etcd = self._etcd(names)
        if etcd is None or network is None:
            return None
        members = set(etcd.members)
        discovery_node = etcd.discovery.node
        built = tuple(
            Node(
                index=i + 1, name=n["name"], ip=n["ip"],
                etcd_role=(EtcdRole.DISCOVERY if n["name"] == discovery_node else
                           EtcdRole.MEMBER if n["name"] in members else EtcdRole.PROXY),
                metadata=n["metadata"], vagrant=n["vagrant"],
                write_files=self._write_files(d.get("write_files", []), ("write_files",))
                + self._write_files(n["write_files"], n["path"] + ("write_files",)),
                node_units=self._node_units(d.get("node_units", []), ("node_units",))
                + self._node_units(n["node_units"], n["path"] + ("node_units",)),
                etcd2_settings=tuple(n["etcd2"].items()),
                fleet_settings=tuple(n["fleet"].items()),
            )
            for i, n in enumerate(nodes)
        )
        self._check_passthrough(nodes)
        tls = d.get("tls", True)
        if tls is False:
            self.warn(("tls",), "`tls: false`: etcd accepts anyone who can reach it, and "
                      "whoever can write fleet's keys runs code on every node; leave it "
                      "out (mutual TLS) unless this is a throwaway tutorial cluster")
        units = build_unit_sets(self.doc, Path(self.doc.file).parent, self.read_text,
                                self.problems)
        return Cluster(
            name=d["name"], source=self.doc.file, provider=provider, network=network,
            nodes=built, etcd=etcd, fleet=self._fleet(), flannel=self._flannel(),
            vagrant=vagrant, ssh_authorized_keys=tuple(d.get("ssh_authorized_keys", [])),
            units=units, tls=tls is not False,
        )

    def _network(self, provider: str) -> tuple[ipaddress.IPv4Network | None, int]:
        spec = self.data.get("network", {})
        from provision.providers import get_provider

        rules = get_provider(provider)
        cidr, start = rules.default_network
        cidr, start = spec.get("cidr", cidr), spec.get("start", start)
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as err:
            hint = ""
            try:
                hint = f"; did you mean {ipaddress.ip_network(cidr, strict=False)}?"
            except ValueError:
                pass
            self.error(("network", "cidr"), f"`network.cidr`: {err}{hint}")
            return None, start
        if not isinstance(network, ipaddress.IPv4Network):
            self.error(("network", "cidr"), "`network.cidr` must be an IPv4 network")
            return None, start
        problem = rules.network_problem(network)
        if problem:
            self.error(("network", "cidr"), problem)
            return None, start
        return network, start

    # -- nodes -------------------------------------------------------------------------------

    def _nodes(self, network: ipaddress.IPv4Network, start: int, vagrant: VagrantSettings,
               fleet_meta: dict[str, str]) -> list[dict[str, Any]]:
        spec = self.data["nodes"]
        if isinstance(spec, dict):
            count, prefix = spec["count"], spec.get("name_prefix", "core")
            width = max(2, len(str(count)))
            group_meta = {**fleet_meta, **_metadata(spec.get("metadata", {}))}
            overrides = spec.get("overrides", {})
            entries = []
            for i in range(count):
                name = f"{prefix}-{i + 1:0{width}d}"
                entries.append({**overrides.get(name, {}), "name": name,
                                "path": ("nodes", "overrides", name) if name in overrides
                                else ("nodes",)})
            known = {e["name"] for e in entries}
            for name in overrides:
                if name not in known:
                    self.error(("nodes", "overrides", name),
                               f"`nodes.overrides`: no node is named `{name}`"
                               f"{did_you_mean(name, sorted(known))}; nodes are "
                               f"{_span(entries)}", key=True)
        else:
            group_meta = fleet_meta
            entries = [{**e, "path": ("nodes", i)} for i, e in enumerate(spec)]

        nodes, seen_names, seen_ips = [], {}, {}
        usable = _usable_hosts(network)
        next_offset = start
        for entry in entries:
            name, path = entry["name"], entry["path"]
            if name in seen_names:
                self.error(path + ("name",), f"duplicate node name `{name}` (also node "
                                             f"{seen_names[name]}); node names must be unique")
            seen_names.setdefault(name, len(nodes) + 1)
            if "ip" in entry:
                ip = self._explicit_ip(entry["ip"], network, path + ("ip",))
            else:
                ip = None
                offset = next_offset
                next_offset += 1
                if offset > usable:
                    if offset == usable + 1:
                        self.error(("network",) if "network" in self.data else ("nodes",),
                                   f"network {network} holds {max(usable - start + 1, 0)} node "
                                   f"addresses from offset {start}, but the cluster has "
                                   f"{len(entries)} nodes; use a larger network or a "
                                   "smaller `network.start`")
                else:
                    ip = network.network_address + offset
            if ip is not None:
                if ip in seen_ips:
                    self.error(path, f"node `{name}` has IP {ip}, already used by node "
                                     f"`{seen_ips[ip]}`; give each node its own address")
                seen_ips.setdefault(ip, name)
            nodes.append({
                "name": name, "ip": ip, "path": path,
                "metadata": tuple({**group_meta, **_metadata(entry.get("metadata", {}))}.items()),
                "vagrant": _vagrant(entry.get("vagrant", {}), vagrant),
                "write_files": entry.get("write_files", []),
                "node_units": entry.get("node_units", []),
                "etcd2": entry.get("etcd2", {}), "fleet": entry.get("fleet", {}),
            })
        return nodes

    def _explicit_ip(self, text: str, network: ipaddress.IPv4Network,
                     path: tuple[Hashable, ...]) -> ipaddress.IPv4Address | None:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            self.error(path, f"`{dotted(path)}`: {text!r} is not an IPv4 address")
            return None
        if ip not in network:
            self.error(path, f"`{dotted(path)}`: {ip} is outside the cluster network "
                             f"{network}; pick an address inside it or widen `network.cidr`")
            return None
        return ip  # type: ignore[return-value]

    # -- etcd --------------------------------------------------------------------------------

    def _etcd(self, names: list[str]) -> EtcdSpec | None:
        spec = self.data.get("etcd", {})
        disc = spec.get("discovery", {"mode": DEFAULT_MODE})
        mode = MODES[disc["mode"]]
        discovery_node = self._check_discovery(disc, mode, names)
        members = self._etcd_members(spec, names, discovery_node)
        client_port, peer_port = spec.get("client_port", 2379), spec.get("peer_port", 2380)
        if client_port == peer_port:
            self.error(("etcd", "peer_port" if "peer_port" in spec else "client_port"),
                       f"`etcd.client_port` and `etcd.peer_port` must differ (both {peer_port})")
        discovery = Discovery(
            mode=mode.name, url=disc.get("url"),
            service=disc.get("service", Discovery.service).rstrip("/"),
            node=discovery_node, domain=(disc.get("domain") or "").rstrip(".") or None,
            dns_server=disc.get("dns_server"),
            cluster_token=disc.get("cluster_token", f"{self.data['name']}-etcd"),
        )
        return EtcdSpec(members=tuple(members), discovery=discovery, client_port=client_port,
                        peer_port=peer_port, settings=tuple(spec.get("settings", {}).items()))

    def _check_discovery(self, disc: dict, mode: DiscoveryMode, names: list[str]) -> str | None:
        """Report the discovery section's problems; the discovery etcd's node if it is valid."""
        for key in disc:
            readers = modes_reading(key)
            if key != "mode" and mode.name not in readers:
                self.error(("etcd", "discovery", key),
                           f"`etcd.discovery.{key}` applies only to {' or '.join(readers)} "
                           f"discovery, not {mode.name}; remove it", key=True)
        return mode.validate(disc, names, self.error)

    def _etcd_members(self, spec: dict, names: list[str],
                      discovery_node: str | None) -> list[str]:
        members_spec = spec.get("members", "all")
        if members_spec == "all":
            members = [n for n in names if n != discovery_node]
        else:
            members = []
            for i, name in enumerate(members_spec):
                path = ("etcd", "members", i)
                if name not in names:
                    self.error(path, f"`etcd.members`: `{name}` is not a node of this cluster"
                                     f"{did_you_mean(name, names)}")
                elif name == discovery_node:
                    self.error(path, f"`{name}` runs the discovery etcd and cannot also be a "
                                     "member; remove it from `etcd.members`")
                elif name in members:
                    self.error(path, f"`etcd.members` lists `{name}` twice")
                else:
                    members.append(name)
        if not members and not any(p.severity == "error" for p in self.problems):
            self.error(("etcd",), "no etcd members: list at least one node in `etcd.members`")
        if members and len(members) % 2 == 0:
            self.warn(("etcd", "members") if "members" in spec else ("etcd",),
                      f"{len(members)} etcd members tolerate no more failures than "
                      f"{len(members) - 1}; an odd number is recommended")
        return members

    # -- sections ------------------------------------------------------------------------------

    def _fleet(self) -> FleetSpec:
        spec = self.data.get("fleet", {})
        ttl = spec.get("agent_ttl")
        for i, url in enumerate(spec.get("etcd_servers", [])):
            if not HTTP_URL.match(url):
                self.error(("fleet", "etcd_servers", i), f"`fleet.etcd_servers` entries must "
                                                         f"be http(s) URLs, got {url!r}")
        return FleetSpec(
            public_ip=spec.get("public_ip", FleetSpec.public_ip),
            agent_ttl=f"{ttl}s" if isinstance(ttl, int) else ttl,
            engine_reconcile_interval=spec.get("engine_reconcile_interval"),
            etcd_servers=tuple(spec.get("etcd_servers", [])),
            etcd_key_prefix=spec.get("etcd_key_prefix"),
        )

    def _flannel(self) -> FlannelSpec | None:
        if "flannel" not in self.data:
            return None
        spec = self.data["flannel"]
        config = spec.get("config")
        if config is not None:
            try:
                ipaddress.ip_network(str(config["Network"]), strict=True)
            except ValueError as err:
                self.error(("flannel", "config", "Network"), f"`flannel.config.Network`: {err}")
        return FlannelSpec(
            interface=spec.get("interface"),
            config_json=json.dumps(config, separators=(", ", ": "), default=str)
            if config is not None else None,
            etcd_prefix=spec.get("etcd_prefix", FlannelSpec.etcd_prefix).rstrip("/"),
        )

    def _write_files(self, specs: list[dict], base: tuple[Hashable, ...]
                     ) -> tuple[WriteFile, ...]:
        files = []
        for i, spec in enumerate(specs):
            path = posixpath.normpath(spec["path"])
            if path == "/usr" or on_read_only_usr(path):
                self.error(base + (i, "path"), f"write_files path {spec['path']!r} is under "
                                               "/usr, which is read-only on CoreOS "
                                               "(coreos-cloudinit refuses any file whose "
                                               "directory starts with /usr); write to /etc "
                                               "or /opt instead")
            content, encoding = spec.get("content", ""), spec.get("encoding")
            if encoding:
                self._check_encoded(base + (i,), "content" in spec, content, encoding)
            files.append(WriteFile(path=path, content=content,
                                   permissions=spec.get("permissions"),
                                   owner=spec.get("owner"), encoding=encoding))
        return tuple(files)

    def _check_encoded(self, entry: tuple[Hashable, ...], has_content: bool, content: str,
                       encoding: str) -> None:
        """What coreos-cloudinit's validator says of the rendered entry, said here."""
        where = entry + (("content",) if has_content else ("encoding",))
        raw = content.encode("utf-8")
        try:
            decode_content(raw, encoding)
        except UndecodableContent as err:
            self.error(where, f"`{dotted(where)}` cannot be decoded as {encoding!r}: {err}; "
                              "coreos-cloudinit refuses the file")
            return
        body = gzip_body_problem(raw, encoding)
        if body:
            self.warn(where, f"`{dotted(where)}`: {body}; coreos-cloudinit writes only what "
                             "it could decompress")

    def _check_passthrough(self, nodes: list[dict[str, Any]]) -> None:
        """Settings passed verbatim into coreos.etcd2 / coreos.fleet, checked as the
        rendered user-data will be (an unknown key is a warning, a bad value an error)."""
        sections = [(("etcd", "settings"), "etcd2", self.data.get("etcd", {}).get("settings"))]
        for n in nodes:
            sections += [(n["path"] + ("etcd2",), "etcd2", n["etcd2"]),
                         (n["path"] + ("fleet",), "fleet", n["fleet"])]
        checked: set[tuple[Hashable, ...]] = set()
        for base, section, settings in sections:
            if not settings or base in checked:
                continue
            checked.add(base)
            entries = {dashed(key): (value, key) for key, value in settings.items()}
            for finding in check_section(section, entries):
                self.problems.append(self.doc.problem(
                    base + (finding.key,), f"`{dotted(base)}`: {finding.message}",
                    key=finding.at_key, severity=finding.severity))

    def _node_units(self, specs: list[dict], base: tuple[Hashable, ...]
                    ) -> tuple[NodeUnit, ...]:
        from fleetd.unit.names import UnitNameError, parse_unit_name

        units = []
        for i, spec in enumerate(specs):
            try:
                parse_unit_name(spec["name"])
            except UnitNameError as err:
                self.error(base + (i, "name"), f"`{dotted(base + (i, 'name'))}`: {err}")
            units.append(NodeUnit(
                name=spec["name"], command=spec.get("command"), enable=spec.get("enable"),
                mask=spec.get("mask"), runtime=spec.get("runtime"), content=spec.get("content"),
                drop_ins=tuple(DropIn(d["name"], d["content"]) for d in spec.get("drop-ins", [])),
            ))
        return tuple(units)


def _usable_hosts(network: ipaddress.IPv4Network) -> int:
    """The highest offset from the network address that a node may take."""
    if network.prefixlen >= 31:
        return network.num_addresses - 1
    return network.num_addresses - 2  # the broadcast address is not a host


def _metadata(spec: dict[str, Any]) -> dict[str, str]:
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in spec.items()}


def _vagrant_defaults(spec: dict[str, Any]) -> VagrantSettings:
    """lxc machines boot the box `provision box build` makes; the others a stock one."""
    if spec.get("provider") == "lxc":
        return VagrantSettings(box=LXC_BOX)
    return VagrantSettings()


def _vagrant(spec: dict[str, Any], base: VagrantSettings) -> VagrantSettings:
    if not spec:
        return base
    return VagrantSettings(**{**base.__dict__, **spec})


def _span(entries: list[dict]) -> str:
    if len(entries) <= 3:
        return ", ".join(e["name"] for e in entries)
    return f"{entries[0]['name']} … {entries[-1]['name']}"
