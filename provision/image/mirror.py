"""The Debian mirror this host's apt uses, for mmdebstrap (reads apt's source lists)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

MIRROR_ENV = "PROVISION_DEBIAN_MIRROR"
APT_LISTS = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


def debian_mirror(suite: str, env_names: Sequence[str] = (MIRROR_ENV,),
                  environ: os._Environ | dict | None = None) -> str | None:
    """The first environment variable of `env_names` that is set, else the mirror apt uses
    for `suite` (or, on a host of another release, its main Debian mirror)."""
    environ = os.environ if environ is None else environ
    for name in env_names:
        if environ.get(name):
            return environ[name]
    sources = []  # (uri, suites, components)
    listed, directory = APT_LISTS
    for path in [listed, *sorted(directory.glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            sources += deb822_sources(text)
        elif path.suffix == ".list":
            sources += one_line_sources(text)
        # apt itself ignores other names (e.g. "*.list.disabled"), so do we.
    for uri, suites, components in sources:
        if suite in suites and "main" in components:
            return uri
    for uri, _suites, components in sources:
        if uri.rstrip("/").endswith("/debian") and "main" in components:
            return uri
    return None


def deb822_sources(text: str) -> list[tuple[str, list[str], list[str]]]:
    found = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            found.append((uri, fields.get("suites", "").split(),
                          fields.get("components", "").split()))
    return found


def one_line_sources(text: str) -> list[tuple[str, list[str], list[str]]]:
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [arch=... signed-by=...] options
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            found.append((words[0], [words[1]], words[2:]))
    return found
