"""What a provider puts on a machine before its first boot, for the boot unit (pure).

The image's provision-cloudinit.service applies `USER_DATA` at every boot with
`ENVIRONMENT_FILE` loaded; the address variables come from there, as on a
coreos-vagrant box. A provider writes these files into the machine's root (for nspawn:
the overlay's upper directory) before it boots, and may replace the user-data later and
run `provision cloudinit --from-file USER_DATA` in the machine to apply the change.
"""

from __future__ import annotations

from provision.userdata.substitution import ENVIRONMENT

USER_DATA = "/var/lib/provision/user-data"
ENVIRONMENT_FILE = "/etc/environment"


def seed_files(user_data: str, private_ipv4: str, public_ipv4: str | None = None,
               hostname: str | None = None) -> dict[str, tuple[bytes, int]]:
    """{absolute path: (content, mode)} to write into the machine's root before it boots.
    The hostname, if given, is there from the first moment (the user-data sets it too)."""
    environment = (f"{ENVIRONMENT['private_ipv4']}={private_ipv4}\n"
                   f"{ENVIRONMENT['public_ipv4']}={public_ipv4 or private_ipv4}\n")
    files = {USER_DATA: (user_data.encode(), 0o600),
             ENVIRONMENT_FILE: (environment.encode(), 0o644)}
    if hostname:
        files["/etc/hostname"] = (f"{hostname}\n".encode(), 0o644)
    return files
