"""`fleetctl`'s listings stay cheap to start: a command loads only what it uses. Every
module below cost a listing milliseconds before it asked the cluster anything
(dataclasses with inspect ~20 ms plus ~1 ms per class made, typing ~7 ms, the [X-Fleet]
and unit-name parsers, the waiting and lifecycle code of start/stop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fleetd
from tests.fleetd import test_fleetctl_unit as fake_api
from tests.fleetd.test_fleetctl_unit import HELLO, M1, TEMPLATE, FakeFleet, two_machines

PROJECT_ROOT = str(Path(fleetd.__file__).resolve().parent.parent)
sockdir = fake_api.sockdir  # the fake fleet API's fixtures
serve = fake_api.serve

NOT_FOR_A_LISTING = ("dataclasses", "inspect", "typing", "difflib", "fleetd.unit.xfleet",
                     "fleetd.unit.names", "fleetd.unit.specifiers", "fleetd.fleetctl.waiting",
                     "fleetd.fleetctl.lifecycle", "fleetd.fleetctl.targets",
                     "fleetd.fleetctl.explain", "fleetd.fleetctl.remote", "importlib.metadata")
NOT_FOR_VERSION = ("http.client", "json", "fleetd.fleetctl.client", "fleetd.fleetctl.model",
                   "fleetd.unit.unitfile")


def loaded_by(argv: list[str], endpoint: str | None = None,
              watched: tuple[str, ...] = NOT_FOR_A_LISTING) -> tuple[str, list[str]]:
    """(stdout, the watched modules loaded) of `fleetctl ARGV` in a fresh interpreter.

    The interpreter starts without `site` (its `.pth` files may import some of these
    first: one importing certifi brings typing along), finding fleetd by PYTHONPATH, and
    only what the command itself loads counts."""
    probe = ("import io, sys\n"
             "at_start = set(sys.modules)\n"
             "from fleetd.fleetctl.main import run\n"
             "out, sys.stdout = sys.stdout, io.StringIO()\n"
             f"assert run({argv!r}) == 0\n"
             "text, sys.stdout = sys.stdout.getvalue(), out\n"
             f"print(repr((text, sorted(m for m in {watched!r}\n"
             "                          if m in sys.modules and m not in at_start))))\n")
    env = {**os.environ, "FLEETCTL_ENDPOINT": endpoint or "", "PYTHONPATH": PROJECT_ROOT}
    result = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    text, loaded = eval(result.stdout.strip().splitlines()[-1])  # our own repr
    return text, loaded


@pytest.mark.parametrize("argv", [["list-unit-files"], ["list-units"], ["list-machines"],
                                  ["list-unit-files", "--output", "json", "--full"]])
def test_a_listing_loads_only_what_it_uses(serve, argv):
    fake = FakeFleet(machines=two_machines(), page_size=3)
    fake.add_unit("hello.service", HELLO, desired="launched", machine=M1)
    for i in range(5):
        fake.add_unit(f"web@{i}.service", TEMPLATE, desired="launched", machine=M1)
    fake.states = [{"name": "hello.service", "hash": "", "machineID": M1,
                    "systemdLoadState": "loaded", "systemdActiveState": "active",
                    "systemdSubState": "running"}]
    text, loaded = loaded_by(argv, serve(fake))
    assert "hello.service" in text or "192.168.50.14" in text, text
    assert loaded == [], f"{' '.join(argv)} imported {loaded}"


def test_a_global_unit_still_reads_its_x_fleet_section(serve):
    fake = FakeFleet(machines=two_machines())
    fake.add_unit("everywhere.service", HELLO + "\n[X-Fleet]\nGlobal=true\n",
                  desired="launched")
    text, loaded = loaded_by(["list-unit-files", "--output", "json"], serve(fake))
    assert json.loads(text)[0]["target"] == "global"
    assert "fleetd.unit.xfleet" in loaded  # read only where a unit has the section


def test_version_loads_no_client():
    text, loaded = loaded_by(["version"], watched=NOT_FOR_VERSION)
    assert text.startswith("fleetctl version ")
    assert loaded == []


def test_the_console_script_writes_all_its_output_before_it_leaves(serve, tmp_path):
    """`main` ends the process without the interpreter's teardown: whatever the reader,
    everything is written first (a file, a pipe read to the end), and a reader that stops
    early (`| head`) is no error."""
    fake = FakeFleet(machines=two_machines(), page_size=1000)
    for i in range(3000):
        fake.add_unit(f"web@{i}.service", TEMPLATE, desired="launched", machine=M1)
    env = {**os.environ, "FLEETCTL_ENDPOINT": serve(fake)}
    command = [sys.executable, "-m", "fleetd.fleetctl.main", "list-unit-files"]
    with open(tmp_path / "out", "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, text=True,
                                env=env, timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    lines = (tmp_path / "out").read_text().splitlines()
    assert len(lines) == 3001 and lines[-1].startswith("web@999.service")
    piped = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 3001
    head = subprocess.run(f"{' '.join(command)} | head -n 2; exit ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", capture_output=True, text=True,
                          env=env, timeout=60)
    assert head.returncode == 0, head.stderr
    assert head.stdout.splitlines()[0].split() == ["UNIT", "HASH", "DSTATE", "STATE", "TARGET"]
    assert head.stderr == ""


def test_the_editable_install_loads_no_import_finder_at_start_up():
    """The README installs with `pip install -e`: setuptools then writes the project's path
    into a .pth file, or installs an import finder that every interpreter start loads
    (pathlib, urllib: ~10 ms of every `fleetctl` and `provision` command). pyproject's
    package-dir keeps it the path."""
    probe = "import sys; print(sorted(m for m in sys.modules if m.startswith('__editable__')))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
