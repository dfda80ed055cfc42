"""The Debian packages a plain bookworm machine lacks to run a node, fetched on the host.

apt on the host resolves them: it simulates installing `MACHINE_PACKAGES` onto an empty
system (`Dir::State::status=/dev/null`), which lists their whole dependency closure,
and does the same for Debian's Essential packages, which every Debian system has (even
a minbase one). The payload carries the difference, at the exact versions resolved;
inside a machine only the packages it lacks are installed. The parsing is pure; running
apt and `apt-get download` are the edges.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from provision.errors import UserError

APT_LISTS = Path("/var/lib/apt/lists")
SIMULATE = ["apt-get", "--simulate", "-o", "Dir::State::status=/dev/null",
            "-o", "Debug::NoLocking=1", "-o", "APT::Install-Recommends=false",
            "-o", "APT::Install-Suggests=false", "install"]
_INST = re.compile(r"^Inst (\S+) \((\S+) ")


def parse_simulation(text: str) -> list[tuple[str, str]]:
    """(package, version) of every `Inst` line of `apt-get --simulate install`."""
    found = []
    for line in text.splitlines():
        match = _INST.match(line)
        if match:
            name = match.group(1).split(":", 1)[0]  # "libc6:amd64" on multiarch hosts
            found.append((name, match.group(2)))
    return found


def essential_packages(available: str) -> list[str]:
    """The names `Essential: yes` marks in `apt-cache dumpavail` output."""
    names = set()
    for stanza in available.split("\n\n"):
        name = None
        essential = False
        for line in stanza.splitlines():
            if line.startswith("Package:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Essential:"):
                essential = line.split(":", 1)[1].strip().lower() == "yes"
        if name and essential:
            names.add(name)
    return sorted(names)


def beyond_baseline(closure: Iterable[tuple[str, str]],
                    baseline: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The packages of `closure` whose name the baseline lacks, sorted."""
    have = {name for name, _version in baseline}
    return sorted({(n, v) for n, v in closure if n not in have})


def lists_stamp(lists: Path = APT_LISTS) -> str:
    """What apt's package lists are now (names, sizes, mtimes): a resolution made with
    the same lists is the same resolution."""
    rows = []
    for path in sorted(lists.glob("*_Packages*")):
        try:
            info = path.stat()
        except OSError:
            continue
        rows.append([path.name, info.st_size, int(info.st_mtime)])
    return json.dumps(rows)


def _apt(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd,
                              stdin=subprocess.DEVNULL, timeout=900,
                              env={"LANG": "C", "LC_ALL": "C",
                                   "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except FileNotFoundError:
        raise UserError(f"{what}: apt-get is not installed; the machines' Debian packages "
                        "are fetched with the host's apt (a Debian bookworm host)") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
        raise UserError(f"{what} failed (exit {done.returncode}): " + " / ".join(tail)
                        + "; run `apt-get update` (as root) and try again")
    return done.stdout


def resolve(packages: Iterable[str], python: tuple[int, int]) -> list[tuple[str, str]]:
    """(package, version) to carry so a machine with only Essential packages can install
    `packages` offline. The host's apt must be bookworm's (its python must be `python`)."""
    packages = list(packages)
    closure = parse_simulation(_apt([*SIMULATE, *packages],
                                    f"resolving {' '.join(packages)} with apt"))
    if not closure:
        raise UserError(f"apt resolved nothing for {' '.join(packages)}; run `apt-get "
                        "update` (as root) and try again")
    interpreter = f"python{python[0]}.{python[1]}"
    if interpreter not in {name for name, _ in closure}:
        pythons = sorted(n for n, _ in closure if re.fullmatch(r"python3\.\d+", n))
        raise UserError(f"this host's apt resolves {', '.join(pythons) or 'no python3.N'} "
                        f"for the machines, not Debian bookworm's {interpreter}: fetch the "
                        "machines' packages on a Debian bookworm host")
    essential = essential_packages(_apt(["apt-cache", "dumpavail"], "listing Essential "
                                                                    "packages with apt"))
    baseline = parse_simulation(_apt([*SIMULATE, *essential],
                                     "resolving the Essential packages with apt"))
    return beyond_baseline(closure, baseline)


def download(packages: Iterable[tuple[str, str]], directory: Path) -> list[Path]:
    """`apt-get download` of exactly these versions into `directory`."""
    wanted = [f"{name}={version}" for name, version in packages]
    _apt(["apt-get", "download", *wanted], "apt-get download", cwd=directory)
    debs = sorted(directory.glob("*.deb"))
    if len(debs) != len(wanted):
        raise UserError(f"apt-get download fetched {len(debs)} of {len(wanted)} packages "
                        f"into {directory}; run `apt-get update` (as root) and try again")
    return debs
