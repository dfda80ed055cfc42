"""etcd2, fleet and flanneld as CoreOS ran them: a stock unit + a drop-in of variables (pure).

CoreOS shipped `etcd2.service`, `fleet.service` and `flanneld.service`, and
coreos-cloudinit turned each cloud-config section into a drop-in,
`<unit>.d/20-cloudinit.conf`, of `Environment=` lines: every key upper-cased,
dashes as underscores, behind the program's prefix (`ETCD_`, `FLEET_`,
`FLANNELD_`), which each program reads like its flags. Here the stock units are
written by the applier too (the machine is plain Debian), both into
/run/systemd/system as CoreOS's drop-ins were: the applier writes them again at
every boot, before the units start, from the user-data of that boot.

- etcd2.service runs the machine's etcd (Debian's etcd-server: /usr/bin/etcd 3.4),
  as user etcd with its data in /var/lib/etcd2, the v2 API on (flannel's `etcdctl set`
  needs it), `Type=notify`. etcd 3.4 dropped etcd2's `ca-file`/`peer-ca-file`; they
  are passed under their new names.
- fleet.service runs this project's fleetd with the systemd runner and fleet's API
  socket at /var/run/fleet.sock (where fleetctl looks by default). Keys fleetd has no
  setting for are left out, with a note (fleetd would ignore them silently).
- flanneld.service runs flanneld where the machine has it. Where it does not, it still
  stores the network config in etcd as CoreOS's unit did (its drop-ins' ExecStartPre
  `etcdctl set …`): a oneshot that retries until etcd answers, with one note.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleetd.config import SETTINGS as FLEET_SETTINGS
from provision.machine.model import RUNTIME_UNIT_DIR, Facts, UnitFileSpec
from provision.userdata.services import (
    ETCD_RENAMED,
    ETCD_UNIT,
    FLANNEL_UNIT,
    FLEET_UNIT,
    exec_line,
    fleet_settings,
    setting_text,
)

CLOUDINIT_DROP_IN = "20-cloudinit.conf"
ETCD_DATA_DIR = "/var/lib/etcd2"
FLEET_STATE_DIR = "/var/lib/fleet"
FLEET_API_SOCKET = "/var/run/fleet.sock"
# coreos-cloudinit's names where they are not simply the key upper-cased.
FLANNEL_NAMES = {"interface": "IFACE"}
# Variables whose values are secrets (a token discovery URL lets anyone join the cluster):
# a drop-in carrying one is root's alone.
SECRET_VARIABLES = frozenset({"ETCD_DISCOVERY"})
SECRET_DROP_IN_MODE = 0o600
NO_FLANNELD = ("flanneld is not installed on this machine: flanneld.service only stores the "
               "network config in etcd (its drop-ins' ExecStartPre lines), retrying until "
               "etcd answers")


def environment_line(name: str, value: str) -> str:
    """`Environment="NAME=value"`, quoted so systemd hands the program exactly `value`."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
               .replace("\n", "\\n"))
    return f'Environment="{name}={escaped}"'


def variable_name(prefix: str, key: str, renamed: Mapping[str, str] | None = None) -> str:
    """`ETCD_` + `listen-client-urls` -> `ETCD_LISTEN_CLIENT_URLS`."""
    canonical = str(key).replace("-", "_")
    canonical = (renamed or {}).get(canonical, canonical)
    return prefix + canonical.upper()


def drop_in(variables: Mapping[str, str]) -> str:
    return "[Service]\n" + "".join(environment_line(n, v) + "\n" for n, v in variables.items())


def etcd2_variables(section: Mapping) -> dict[str, str]:
    renamed = {old.replace("-", "_"): new.replace("-", "_") for old, new in ETCD_RENAMED.items()}
    return {variable_name("ETCD_", key, renamed): setting_text(value)
            for key, value in section.items() if value is not None}


def fleet_variables(section: Mapping, notes: list[str]) -> dict[str, str]:
    given = fleet_settings({k: v for k, v in section.items() if v is not None},
                           frozenset(FLEET_SETTINGS), notes)
    return {"FLEET_" + name.upper(): value for name, value in given.items()}


def flannel_variables(section: Mapping) -> dict[str, str]:
    out = {}
    for key, value in section.items():
        if value is None:
            continue
        canonical = str(key).replace("-", "_")
        out["FLANNELD_" + FLANNEL_NAMES.get(canonical, canonical.upper())] = setting_text(value)
    if "etcd_endpoints" in {str(k).replace("-", "_") for k in section}:
        # The drop-ins' `etcdctl set` talks to the same etcd as flanneld.
        out["ETCDCTL_ENDPOINTS"] = out["FLANNELD_ETCD_ENDPOINTS"]
    # ... with the same certificate (etcdctl v2's variables).
    for flannel_name, etcdctl_name in (("FLANNELD_ETCD_CAFILE", "ETCDCTL_CA_FILE"),
                                       ("FLANNELD_ETCD_CERTFILE", "ETCDCTL_CERT_FILE"),
                                       ("FLANNELD_ETCD_KEYFILE", "ETCDCTL_KEY_FILE")):
        if flannel_name in out:
            out[etcdctl_name] = out[flannel_name]
    return out


def _unit(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def etcd2_unit(facts: Facts) -> str:
    service = ["[Service]", "Type=notify"]
    if facts.etcd_user:
        service.append(f"User={facts.etcd_user}")
    service += [
        environment_line("ETCD_DATA_DIR", ETCD_DATA_DIR),
        "Environment=ETCD_NAME=%m",
        environment_line("ETCD_ENABLE_V2", "true"),
        "StateDirectory=etcd2", "StateDirectoryMode=0700",
        f"ExecStart={exec_line([facts.etcd or '/usr/bin/etcd'])}",
        "Restart=always", "RestartSec=5s", "LimitNOFILE=40000", "TimeoutStartSec=0",
    ]
    return _unit(["[Unit]", "Description=etcd2: etcd configured by the cloud-config",
                  # Debian's own unit for the same etcd (and ports).
                  "Conflicts=etcd.service", "After=network.target", "", *service])


def fleet_unit(facts: Facts) -> str:
    return _unit([
        "[Unit]", "Description=fleet: fleetd configured by the cloud-config",
        f"After={ETCD_UNIT} network.target", "",
        "[Service]",
        environment_line("FLEET_RUNNER", "systemd"),
        environment_line("FLEET_STATE_DIR", FLEET_STATE_DIR),
        environment_line("FLEET_API_SOCKET", FLEET_API_SOCKET),
        environment_line("FLEET_VERBOSITY", "1"),
        environment_line("PYTHONUNBUFFERED", "1"),
        f"ExecStart={exec_line(list(facts.fleetd))}",
        "Restart=always", "RestartSec=2s", "TimeoutStopSec=30",
    ])


def flanneld_unit(facts: Facts) -> str:
    if facts.flanneld:
        return _unit([
            "[Unit]", "Description=flannel: flanneld configured by the cloud-config",
            f"After={ETCD_UNIT} network.target", "",
            "[Service]", "Type=notify", environment_line("ETCDCTL_API", "2"),
            f"ExecStart={exec_line([facts.flanneld])}", "Restart=always", "RestartSec=5s",
        ])
    return _unit([
        "[Unit]", "Description=flannel's network config in etcd (no flanneld on this machine)",
        f"After={ETCD_UNIT}", "StartLimitIntervalSec=0", "",
        "[Service]", "Type=oneshot", "RemainAfterExit=yes",
        environment_line("ETCDCTL_API", "2"), "ExecStart=/bin/true",
        "Restart=on-failure", "RestartSec=1",
    ])


def service_files(coreos: Mapping, unit_names: set[str], facts: Facts, notes: list[str]
                  ) -> dict[str, list[UnitFileSpec]]:
    """{unit: its stock unit file and cloud-config drop-in} for every service the
    `coreos` section configures or its `units` name."""
    sections = (
        (ETCD_UNIT, "etcd2", etcd2_unit, lambda s: etcd2_variables(s)),
        (FLEET_UNIT, "fleet", fleet_unit, lambda s: fleet_variables(s, notes)),
        (FLANNEL_UNIT, "flannel", flanneld_unit, flannel_variables),
    )
    found: dict[str, list[UnitFileSpec]] = {}
    for unit, key, stock, variables in sections:
        section = coreos.get(key)
        if not isinstance(section, Mapping) and unit not in unit_names:
            continue
        files = [UnitFileSpec(f"{RUNTIME_UNIT_DIR}/{unit}", stock(facts))]
        if isinstance(section, Mapping) and section:
            values = variables(section)
            files.append(UnitFileSpec(f"{RUNTIME_UNIT_DIR}/{unit}.d/{CLOUDINIT_DROP_IN}",
                                      drop_in(values),
                                      SECRET_DROP_IN_MODE if SECRET_VARIABLES & set(values)
                                      else 0o644))
        found[unit] = files
    if ETCD_UNIT in found and not facts.etcd:
        notes.append(f"{ETCD_UNIT}: no etcd on this machine (/usr/bin/etcd: Debian's "
                     "etcd-server); the unit will fail")
    if FLANNEL_UNIT in found and not facts.flanneld:
        notes.append(NO_FLANNELD)
        if not facts.etcdctl:
            notes.append(f"{FLANNEL_UNIT}: no etcdctl on this machine (Debian: etcd-client); "
                         "the network config cannot reach etcd")
    return found
