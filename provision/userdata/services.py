"""What a CoreOS user-data's etcd2/fleet/flannel sections mean for the services they start.

Shared by everything that turns a user-data into running services: the local provider
(processes) and the applier on a real machine (systemd units). Pure.
"""

from __future__ import annotations

import base64
import binascii
import gzip
from collections.abc import Mapping

ETCD_UNIT = "etcd2.service"
FLEET_UNIT = "fleet.service"
FLANNEL_UNIT = "flanneld.service"
# etcd2 names that etcd 3 spells differently.
ETCD_RENAMED = {"ca-file": "trusted-ca-file", "peer-ca-file": "peer-trusted-ca-file"}


def setting_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def fleet_settings(section: Mapping, settings: frozenset[str], notes: list[str]
                   ) -> dict[str, str]:
    """The fleet section as fleetd settings: {setting name (underscores): text}. A key that
    is no fleetd setting is noted and left out (fleetd would ignore it silently)."""
    given: dict[str, str] = {}
    for key, value in section.items():
        name = str(key).replace("-", "_")
        if name not in settings:
            notes.append(f"fleet `{key}` is not a fleetd setting; left out")
            continue
        given[name] = setting_text(value)
    return given


def decode_content(text: str, encoding: object) -> bytes:
    """coreos-cloudinit's write_files encodings: base64 (b64), gzip (gz), and both."""
    kind = str(encoding or "").lower()
    if kind in ("", "none"):
        return text.encode("utf-8")
    data = text.encode("utf-8")
    if kind in ("b64", "base64", "gz+b64", "gzip+b64", "gz+base64", "gzip+base64"):
        try:
            # Line breaks are fine (as Go's decoder takes them); anything else outside
            # the alphabet is an error, not silently dropped.
            data = base64.b64decode(b"".join(data.split()), validate=True)
        except binascii.Error as err:
            raise ValueError(f"content is not valid base64: {err}") from None
        kind = kind.partition("+")[0] if "+" in kind else ""
    if kind in ("gz", "gzip"):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise ValueError(f"content is not valid gzip data: {err}") from None
    if kind:
        raise ValueError(f"unknown encoding {encoding!r} (known: b64, gz, gz+b64)")
    return data


def exec_line(argv: tuple[str, ...] | list[str]) -> str:
    """An Exec*= value that the unit-file reader splits back into exactly `argv`."""
    words = []
    for word in argv:
        escaped = word.replace("%", "%%").replace("$", "$$")
        if escaped and not any(c in escaped for c in " \t\n\"'\\;"):
            words.append(escaped)
        else:
            words.append('"' + escaped.replace("\\", "\\\\").replace('"', '\\"')
                         .replace("\n", "\\n") + '"')
    return " ".join(words)
