"""The cloud-config structure coreos-cloudinit v1.13.0 knows, as data.

This mirrors coreos-cloudinit's `config` structs: each `Field` says what kind
of value a key takes (`string`, `int`, `float`, `bool`, `mapping`, `list`),
for a mapping which keys it knows, for a list what each item is. Two
annotations are coreos-cloudinit's own struct tags:

- `valid`: a Go regular expression the value must match (its `valid:` tag);
  a mismatch is an error.
- `deprecated`: the reason a key is deprecated (its `deprecated:` tag); using
  the key is a warning.

The others are this project's, stricter than coreos-cloudinit and kept apart
so the difference stays visible: `required` keys (an error: a unit or a file
without a name cannot be written), `advice` (a pattern whose mismatch is a
warning: the value passes coreos-cloudinit's validator but fails at boot),
and `hint` (a warning for using the key at all). `validate.py` adds the rules
coreos-cloudinit runs beside its structs (write_files decoding, the /usr
rule, etcd v0.4's discovery URL). Key names are given in their canonical form
(underscores); user keys are matched after replacing `-` with `_`, as
coreos-cloudinit does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

STRING = "string"
INT = "int"
FLOAT = "float"
BOOL = "bool"
MAPPING = "mapping"
LIST = "list"

_HUMAN = {STRING: "string", INT: "int", FLOAT: "number", BOOL: "bool", MAPPING: "mapping"}


@dataclass(frozen=True)
class Field:
    kind: str
    valid: str | None = None
    keys: Mapping[str, Field] = field(default_factory=dict)
    item: Field | None = None
    required: tuple[str, ...] = ()
    deprecated: str | None = None
    advice: str | None = None
    hint: str | None = None

    def human_type(self) -> str:
        """The type as a message shows it: `string`, `list of mappings`, ..."""
        if self.kind == LIST and self.item is not None:
            return f"list of {self.item.human_type()}s"
        return _HUMAN[self.kind]


def canonical(key: str) -> str:
    """cloud-init treats `-` and `_` in key names alike; `_` is the canonical form."""
    return key.replace("-", "_")


def string(valid: str | None = None, *, deprecated: str | None = None,
           advice: str | None = None) -> Field:
    return Field(STRING, valid=valid, deprecated=deprecated, advice=advice)


def mapping(keys: Mapping[str, Field], *, required: tuple[str, ...] = (),
            hint: str | None = None) -> Field:
    return Field(MAPPING, keys=MappingProxyType(dict(keys)), required=required, hint=hint)


def list_of(item: Field, *, deprecated: str | None = None) -> Field:
    return Field(LIST, item=item, deprecated=deprecated)


def _typed(kind: str, *names: str, deprecated: str | None = None) -> dict[str, Field]:
    return {name: Field(kind, deprecated=deprecated) for name in names}


def _strings(*names: str, deprecated: str | None = None) -> dict[str, Field]:
    return _typed(STRING, *names, deprecated=deprecated)


# coreos-cloudinit's `deprecated:` texts, verbatim: they are part of its messages.
_REMOTE_KEYS = "trying to fetch from a remote endpoint introduces too many intermittent errors"
_ETCD2_ONLY = "etcd2 options no longer work for etcd"

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
    "ca_file": string(deprecated="ca_file obsoleted by trusted_ca_file and client_cert_auth"),
    "peer_ca_file": string(
        deprecated="peer_ca_file obsoleted peer_trusted_ca_file and peer_client_cert_auth"),
    # coreos-cloudinit passes any value on; etcd refuses to start with anything else.
    "initial_cluster_state": string(advice=r"^(new|existing)$"),
    "proxy": string(r"^(on|off|readonly)$"),
})

# etcd v0.4, configured by the `etcd` section of old CoreOS releases.
ETCD = mapping({
    **_strings(
        "addr", "bind_addr", "ca_file", "cert_file", "cors", "data_dir", "discovery",
        "graphite_host", "key_file", "name", "peer_addr", "peer_bind_addr", "peer_ca_file",
        "peer_cert_file", "peer_key_file", "peers", "peers_file", "trace",
    ),
    **_typed(INT, "cluster_active_size", "max_result_buffer", "max_retry_attempts",
             "peer_election_timeout", "peer_heartbeat_interval", "snapshot_count"),
    **_typed(FLOAT, "cluster_remove_delay", "cluster_sync_interval", "http_read_timeout",
             "http_write_timeout", "retry_interval"),
    **_typed(BOOL, "snapshot", "verbose", "very_verbose", "very_very_verbose"),
    **_strings("advertise_client_urls", "discovery_fallback", "discovery_srv",
               "discovery_proxy", "initial_advertise_peer_urls", "initial_cluster",
               "initial_cluster_state", "initial_cluster_token", "listen_client_urls",
               "listen_peer_urls", "proxy", deprecated=_ETCD2_ONLY),
    **_typed(INT, "election_timeout", "heartbeat_interval", "max_snapshots", "max_wals",
             deprecated=_ETCD2_ONLY),
    **_typed(BOOL, "force_new_cluster", deprecated=_ETCD2_ONLY),
}, hint='"{key}" configures etcd v0.4, which is deprecated; use etcd2')

FLEET = mapping({
    **_strings(
        "agent_ttl", "authorized_keys_file", "etcd_cafile", "etcd_certfile", "etcd_keyfile",
        "etcd_key_prefix", "etcd_servers", "etcd_username", "etcd_password", "metadata",
        "public_ip",
    ),
    **_typed(BOOL, "disable_engine", "verify_units"),
    **_typed(FLOAT, "engine_reconcile_interval", "etcd_request_timeout"),
    **_typed(INT, "token_limit", "verbosity"),
})

FLANNEL = mapping(_strings(
    "etcd_endpoints", "etcd_cafile", "etcd_certfile", "etcd_keyfile", "etcd_prefix",
    "etcd_username", "etcd_password", "ip_masq", "subnet_file", "interface", "public_ip",
))

LOCKSMITH = mapping({
    **_strings("endpoint", "etcd_cafile", "etcd_certfile", "etcd_keyfile", "etcd_username",
               "etcd_password", "group"),
    "window_start": string(r"^((?i:sun|mon|tue|wed|thu|fri|sat|sun) )?"
                           r"0*([0-9]|1[0-9]|2[0-3]):0*([0-9]|[1-5][0-9])$"),
    "window_length": string(r"^[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+$"),
})

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

ENCODINGS = ("base64", "b64", "gz", "gzip", "gz+base64", "gzip+base64", "gz+b64", "gzip+b64")

WRITE_FILE = mapping({
    "path": string(),
    "content": string(),
    "encoding": string(r"^(base64|b64|gz|gzip|gz\+base64|gzip\+base64|gz\+b64|gzip\+b64)$"),
    "owner": string(),
    "permissions": string(r"^0?[0-7]{3,4}$"),
}, required=("path",))

USER = mapping({
    **_strings("name", "passwd", "gecos", "homedir", "primary_group", "shell"),
    **_typed(BOOL, "no_create_home", "no_user_group", "system", "no_log_init"),
    "groups": list_of(Field(STRING)),
    "ssh_authorized_keys": list_of(Field(STRING)),
    "coreos_ssh_import_github": string(deprecated=_REMOTE_KEYS),
    "coreos_ssh_import_github_users": list_of(Field(STRING), deprecated=_REMOTE_KEYS),
    "coreos_ssh_import_url": string(deprecated=_REMOTE_KEYS),
})

CLOUD_CONFIG = mapping({
    "coreos": COREOS,
    "ssh_authorized_keys": list_of(Field(STRING)),
    "hostname": string(),
    "users": list_of(USER),
    "write_files": list_of(WRITE_FILE),
    # coreos-cloudinit takes any string here and fails at boot on all but "localhost".
    "manage_etc_hosts": string(advice=r"^localhost$"),
})
