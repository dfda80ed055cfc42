"""The cloud-config structure coreos-cloudinit knows, as data.

Each `Field` says what kind of value a key takes (`string`, `int`, `bool`,
`mapping`, `list`), for a mapping which keys it knows, for a list what each
item is, and optionally a `valid` pattern the value must match (coreos-
cloudinit's `valid:` struct tags), keys a mapping must have, a deprecation
message (`{key}` stands for the user's spelling of the key) or the name of
an extra check `validate.py` runs. Key names are given in their canonical
form (underscores); user keys are matched after replacing `-` with `_`, as
coreos-cloudinit does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

STRING = "string"
INT = "int"
BOOL = "bool"
MAPPING = "mapping"
LIST = "list"


@dataclass(frozen=True)
class Field:
    kind: str
    valid: str | None = None
    keys: Mapping[str, Field] = field(default_factory=dict)
    item: Field | None = None
    required: tuple[str, ...] = ()
    deprecated: str | None = None
    check: str | None = None

    def human_type(self) -> str:
        """The type as a message shows it: `string`, `list of mappings`, ..."""
        if self.kind == LIST and self.item is not None:
            return f"list of {self.item.human_type()}s"
        return self.kind


def canonical(key: str) -> str:
    """cloud-init treats `-` and `_` in key names alike; `_` is the canonical form."""
    return key.replace("-", "_")


def string(valid: str | None = None, *, deprecated: str | None = None,
           check: str | None = None) -> Field:
    return Field(STRING, valid=valid, deprecated=deprecated, check=check)


def mapping(keys: Mapping[str, Field], *, required: tuple[str, ...] = (),
            deprecated: str | None = None) -> Field:
    return Field(MAPPING, keys=MappingProxyType(dict(keys)), required=required,
                 deprecated=deprecated)


def list_of(item: Field, *, deprecated: str | None = None) -> Field:
    return Field(LIST, item=item, deprecated=deprecated)


def _strings(*names: str) -> dict[str, Field]:
    return {name: string() for name in names}


def _typed(kind: str, *names: str) -> dict[str, Field]:
    return {name: Field(kind) for name in names}


_REMOTE_KEYS = ('"{key}" is deprecated: fetching keys from a remote endpoint at boot fails '
                "intermittently; list the keys in ssh_authorized_keys")

ETCD2 = mapping({
    **_strings(
        "advertise_client_urls", "cert_file", "cors", "data_dir", "discovery",
        "discovery_fallback", "discovery_srv", "discovery_proxy",
        "initial_advertise_peer_urls", "initial_cluster", "initial_cluster_token",
        "key_file", "listen_client_urls", "listen_peer_urls", "log_package_levels", "name",
        "peer_cert_file", "peer_key_file", "peer_trusted_ca_file", "trusted_ca_file", "wal_dir",
    ),
    **_typed(BOOL, "client_cert_auth", "debug", "enable_pprof", "force_new_cluster",
             "peer_client_cert_auth", "strict_reconfig_check"),
    **_typed(INT, "election_timeout", "heartbeat_interval", "max_snapshots", "max_wals",
             "proxy_dial_timeout", "proxy_failure_wait", "proxy_read_timeout",
             "proxy_refresh_interval", "proxy_write_timeout", "snapshot_count"),
    "ca_file": string(deprecated='"{key}" is deprecated; use trusted_ca_file and client_cert_auth'),
    "peer_ca_file": string(deprecated=('"{key}" is deprecated; '
                                            "use peer_trusted_ca_file and peer_client_cert_auth")),
    "initial_cluster_state": string(r"^(new|existing)$"),
    "proxy": string(r"^(on|off|readonly)$"),
})

# etcd v0.4, configured by the `etcd` section of old CoreOS releases.
ETCD = mapping({
    **_strings(
        "addr", "bind_addr", "ca_file", "cert_file", "cors", "data_dir", "discovery",
        "graphite_host", "key_file", "name", "peer_addr", "peer_bind_addr", "peer_ca_file",
        "peer_cert_file", "peer_key_file", "peers", "peers_file", "trace",
        "cluster_remove_delay", "cluster_sync_interval", "http_read_timeout",
        "http_write_timeout", "retry_interval",
    ),
    **_typed(INT, "cluster_active_size", "max_result_buffer", "max_retry_attempts",
             "peer_election_timeout", "peer_heartbeat_interval", "snapshot_count"),
    **_typed(BOOL, "snapshot", "verbose", "very_verbose", "very_very_verbose"),
}, deprecated="{key} (v0.4) is deprecated; use etcd2")

FLEET = mapping({
    **_strings(
        "agent_ttl", "authorized_keys_file", "engine_reconcile_interval", "etcd_cafile",
        "etcd_certfile", "etcd_keyfile", "etcd_key_prefix", "etcd_request_timeout",
        "etcd_servers", "metadata", "public_ip",
    ),
    **_typed(BOOL, "disable_engine", "verify_units"),
    "verbosity": Field(INT),
})

FLANNEL = mapping(_strings(
    "etcd_endpoints", "etcd_cafile", "etcd_certfile", "etcd_keyfile", "etcd_prefix", "ip_masq",
    "subnet_file", "interface", "public_ip",
))

LOCKSMITH = mapping(_strings(
    "endpoint", "etcd_cafile", "etcd_certfile", "etcd_keyfile", "group", "window_start",
    "window_length",
))

UPDATE = mapping({
    "reboot_strategy": string(r"^(best-effort|etcd-lock|reboot|off)$"),
    **_strings("group", "server"),
})

OEM = mapping(_strings("id", "name", "version_id", "home_url", "bug_report_url"))

DROP_IN = mapping(_strings("name", "content"), required=("name",))

UNIT = mapping({
    **_strings("name", "content"),
    **_typed(BOOL, "mask", "enable", "runtime"),
    "command": string(
        r"^(start|stop|restart|reload|try-restart|reload-or-restart|reload-or-try-restart)$"),
    "drop_ins": list_of(DROP_IN),
}, required=("name",))

COREOS = mapping({
    "etcd": ETCD,
    "etcd2": ETCD2,
    "flannel": FLANNEL,
    "fleet": FLEET,
    "locksmith": LOCKSMITH,
    "update": UPDATE,
    "oem": OEM,
    "units": list_of(UNIT),
})

WRITE_FILE = mapping({
    "path": string(check="write_file_path"),
    "content": string(),
    "encoding": string(r"^(base64|b64|gz|gzip|gz\+base64|gzip\+base64|gz\+b64|gzip\+b64)$"),
    "owner": string(),
    "permissions": string(r"^0?[0-7]{3,4}$", check="permissions"),
}, required=("path",))

USER = mapping({
    **_strings("name", "gecos", "passwd", "homedir", "primary_group", "shell"),
    **_typed(BOOL, "no_create_home", "no_user_group", "system", "no_log_init"),
    "groups": list_of(string()),
    "ssh_authorized_keys": list_of(string()),
    "coreos_ssh_import_github": string(deprecated=_REMOTE_KEYS),
    "coreos_ssh_import_github_users": list_of(string(), deprecated=_REMOTE_KEYS),
    "coreos_ssh_import_url": string(deprecated=_REMOTE_KEYS),
})

CLOUD_CONFIG = mapping({
    "coreos": COREOS,
    "ssh_authorized_keys": list_of(string()),
    "hostname": string(),
    "users": list_of(USER),
    "write_files": list_of(WRITE_FILE),
    "manage_etc_hosts": string(r"^localhost$"),
})
