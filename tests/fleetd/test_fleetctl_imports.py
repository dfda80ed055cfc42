"""`fleetctl`'s listings stay cheap to start: a command loads only what it uses. Every
module below cost a listing milliseconds before it asked the cluster anything
(dataclasses with inspect ~20 ms plus ~1 ms per class made, typing ~7 ms, the [X-Fleet]
and unit-name parsers, the waiting and lifecycle code of start/stop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.fleetd import test_fleetctl_unit as fake_api
from tests.fleetd.test_fleetctl_unit import HELLO, M1, TEMPLATE, FakeFleet, two_machines

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
    """(stdout, the watched modules loaded) of `fleetctl ARGV` in a fresh interpreter."""
    probe = ("import io, runpy, sys\n"
             f"sys.argv = ['fleetctl', *{argv!r}]\n"
             "out, sys.stdout = sys.stdout, io.StringIO()\n"
             "try:\n"
             "    runpy.run_module('fleetd.fleetctl.main', run_name='__main__')\n"
             "except SystemExit as done:\n"
             "    assert not done.code, done.code\n"
             "text, sys.stdout = sys.stdout.getvalue(), out\n"
             f"print(repr((text, sorted(m for m in {watched!r} if m in sys.modules))))\n")
    env = {**os.environ, "FLEETCTL_ENDPOINT": endpoint or ""}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
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
