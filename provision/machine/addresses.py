"""The machine's own addresses, for `$private_ipv4` / `$public_ipv4` (pure).

Where they come from, first found wins, per variable: the command line
(`--private-ipv4`, `--public-ipv4`), the process environment (`COREOS_PRIVATE_IPV4`,
`COREOS_PUBLIC_IPV4`, … as CoreOS's coreos-cloudinit read them), then the environment
file (default /etc/environment, as coreos-vagrant wrote it; the boot unit also loads it
with `EnvironmentFile=`). A machine with one address (an nspawn machine, a
coreos-vagrant box) may give only one of the two IPv4 addresses: it stands for both.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping

from provision.errors import UserError
from provision.userdata.substitution import ENVIRONMENT, NAMES

PAIRS = (("private_ipv4", "public_ipv4"), ("private_ipv6", "public_ipv6"))


def parse_environment_file(text: str) -> dict[str, str]:
    """`KEY=value` lines (`export` and shell quotes allowed, `#` comments), as systemd's
    EnvironmentFile= and a shell both read the simple cases."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip().replace("_", "").isalnum():
            continue
        try:
            words = shlex.split(value, comments=True)
        except ValueError:
            words = [value.strip()]
        found[key.strip()] = " ".join(words)
    return found


def machine_addresses(flags: Mapping[str, str | None], environ: Mapping[str, str],
                      environment_file: Mapping[str, str], *, file_name: str = "") -> dict:
    """{variable: address}; UserError naming the source of an address that is not one."""
    found: dict[str, str] = {}
    for name in NAMES:
        variable = ENVIRONMENT[name]
        for value, where in ((flags.get(name), f"--{name.replace('_', '-')}"),
                             (environ.get(variable), f"${variable}"),
                             (environment_file.get(variable), f"{file_name}: {variable}")):
            if value is None or value == "":
                continue
            try:
                address = ipaddress.ip_address(value.strip())
            except ValueError:
                raise UserError(f"{where}: {value!r} is not an IP address") from None
            if address.version != int(name[-1]):
                raise UserError(f"{where}: {value} is not an IPv{name[-1]} address")
            found[name] = str(address)
            break
    for private, public in PAIRS:
        if private in found and public not in found:
            found[public] = found[private]
        elif public in found and private not in found:
            found[private] = found[public]
    return found
