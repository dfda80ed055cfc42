"""`provision certs rotate` of a Vagrant cluster: the order of things (pure, over recording
fakes) and what the CLI asks of Vagrant (the fake `vagrant`, tests/support/fake_vagrant.py).
Real machines taking the certificates: tests/integration/test_vagrant_lxc.py."""

from __future__ import annotations

import shutil

import pytest
import yaml
from cryptography import x509

from provision import pki
from provision.errors import OperationFailed
from provision.providers import vagrant_lifecycle, vagrant_rotate
from provision.providers.vagrant_rotate import (
    Probes,
    RotatedNode,
    not_running_problem,
    render_keeping,
    roll,
)
from tests.conftest import CLUSTERS
from tests.support import fake_vagrant

NAMES = ("core-01", "core-02", "core-03")


# -- the order of things --------------------------------------------------------------------

class World:
    """Machines whose etcd serves the serial they were last provisioned with, and a log of
    everything done to them, in order."""

    def __init__(self, members: tuple[str, ...] = NAMES) -> None:
        self.events: list[tuple[str, ...]] = []
        self.pending = {n: 1 for n in NAMES}  # serial in the rendered user-data
        self.served = {n: 1 for n in NAMES}
        self.registered = {f"ip-{n}" for n in NAMES}
        self.lag = 0  # probes that still see the old serial after a provision
        self.members = members
        self.restarted: list[str] = []

    def nodes(self) -> list[RotatedNode]:
        return [RotatedNode(n, f"url-{n}", f"ip-{n}", n in self.members) for n in NAMES]

    # Machines
    def provision(self, node: str) -> None:
        self.events.append(("provision", node))
        self._lags = {**getattr(self, "_lags", {}), node: self.lag}
        self.served_after = {**getattr(self, "served_after", {}), node: self.pending[node]}

    def restart_etcd(self, node: str) -> None:
        self.events.append(("restart", node))
        self.restarted.append(node)

    # Probes
    def probes(self) -> Probes:
        def served_serial(url: str) -> int | None:
            node = url.removeprefix("url-")
            lags = getattr(self, "_lags", {})
            if lags.get(node, 0) > 0:
                lags[node] -= 1
                return self.served[node]
            self.served[node] = getattr(self, "served_after", {}).get(node, self.served[node])
            self.events.append(("serves", node, str(self.served[node])))
            return self.served[node]

        def serves(url: str) -> bool:
            self.events.append(("healthy", url.removeprefix("url-")))
            return True

        return Probes(served_serial, lambda: set(self.registered), serves)

    def render(self) -> None:
        self.events.append(("render",))
        for n in NAMES:
            self.pending[n] = 2

    def publish(self) -> None:
        self.events.append(("publish",))


def test_each_machine_serves_its_new_certificate_before_the_next_is_provisioned():
    world = World()
    world.lag = 2  # a busy machine: etcd shows the old certificate for a while
    lines: list[str] = []
    rolled = roll(world.nodes(), world, world.probes(), expected={n: 2 for n in NAMES},
                  render=world.render, publish=world.publish, timeout=30, report=lines.append)
    assert rolled == 3
    assert world.events == [
        ("render",),
        ("provision", "core-01"), ("serves", "core-01", "2"),
        ("provision", "core-02"), ("serves", "core-02", "2"),
        ("provision", "core-03"), ("serves", "core-03", "2"),
        ("publish",), ("render",),
        ("provision", "core-01"), ("provision", "core-02"), ("provision", "core-03"),
        ("restart", "core-01"), ("healthy", "core-01"),
        ("restart", "core-02"), ("healthy", "core-02"),
        ("restart", "core-03"), ("healthy", "core-03"),
    ]
    assert lines == ([f"{n}: new certificates in place" for n in NAMES]
                     + ["revocation list published to 3 nodes"]
                     + [f"{n}: etcd restarted, serving" for n in NAMES])


def test_a_proxy_is_provisioned_but_neither_waited_on_for_a_serial_nor_restarted():
    world = World(members=("core-01", "core-02"))
    roll(world.nodes(), world, world.probes(), expected={n: 2 for n in NAMES},
         render=world.render, publish=world.publish, timeout=30)
    assert ("serves", "core-03", "2") not in world.events
    assert world.restarted == ["core-01", "core-02"]
    assert world.events.count(("provision", "core-03")) == 2


def test_the_next_member_restarts_only_once_the_last_one_serves_again(monkeypatch):
    monkeypatch.setattr(vagrant_rotate, "POLL_S", 0.0)
    world = World()
    answers = iter([False, False, True, True, True])
    base = world.probes()
    probes = Probes(base.served_serial, base.registered,
                    lambda url: world.events.append(("probe", url)) or next(answers))
    roll(world.nodes(), world, probes, expected={n: 2 for n in NAMES},
         render=world.render, publish=world.publish, timeout=30)
    tail = world.events[world.events.index(("restart", "core-01")):]
    assert tail[:5] == [("restart", "core-01"), ("probe", "url-core-01"),
                        ("probe", "url-core-01"), ("probe", "url-core-01"),
                        ("restart", "core-02")]


def test_a_machine_that_never_serves_its_new_certificate_stops_the_rollout(monkeypatch):
    monkeypatch.setattr(vagrant_rotate, "POLL_S", 0.0)
    world = World()
    with pytest.raises(OperationFailed, match=r"^core-01: its etcd does not serve its new "
                                              r"certificate 0\.2s after `vagrant provision "
                                              r"core-01`"):
        roll(world.nodes(), world, world.probes(), expected={n: 3 for n in NAMES},
             render=world.render, publish=world.publish, timeout=0.2)
    # Nothing else touched: no other machine, no revocation list.
    assert [e for e in world.events if e[0] in ("provision", "publish", "restart")] == [
        ("provision", "core-01")]


def test_a_fleetd_that_drops_out_stops_the_rollout_before_the_revocation_list(monkeypatch):
    monkeypatch.setattr(vagrant_rotate, "POLL_S", 0.0)
    world = World()
    world.registered.discard("ip-core-02")
    with pytest.raises(OperationFailed, match="core-02: its fleetd is no longer registered"):
        roll(world.nodes(), world, world.probes(), expected={n: 2 for n in NAMES},
             render=world.render, publish=world.publish, timeout=0.2)
    assert ("publish",) not in world.events


@pytest.mark.parametrize(("states", "problem"), [
    ({"core-01": "running", "core-02": "running"}, None),
    ({"core-01": "not_created", "core-02": "not_created"}, None),
    ({"core-01": "running", "core-02": "poweroff"},
     "c: core-02 is poweroff (vagrant status): a machine takes new certificates only while "
     "it runs; start it (`provision node start core-02 -c c`) and rotate again (no "
     "certificate was issued)"),
    ({"core-01": "running", "core-02": "not_created"}, None),
    ({"core-01": "not_created", "core-02": "stopped"}, "c: core-02 is stopped ("),
    ({"core-01": "shutoff", "core-02": "saved"}, "c: core-01 is shutoff, core-02 is saved"),
])
def test_every_machine_must_run_or_none_exist(states, problem):
    found = not_running_problem("c", list(states.items()))
    assert found == problem or (problem is not None and found.startswith(problem))


def test_a_render_keeps_what_lives_beside_the_rendered_files(tmp_path):
    directory = tmp_path / "out" / "c"
    directory.mkdir(parents=True)
    for name, text in (("user-data-1", "old"), ("payload.tar", "big"), ("ssh-config", "s")):
        (directory / name).write_text(text)

    def render(target):  # as write_rendered does: a new directory swapped in
        shutil.rmtree(target)
        target.mkdir()
        (target / "user-data-1").write_text("new")

    render_keeping(render, directory, ("payload.tar", "ssh-config", "known_hosts"))
    assert {p.name: p.read_text() for p in directory.iterdir()} == {
        "user-data-1": "new", "payload.tar": "big", "ssh-config": "s"}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["c"]  # nothing left over


# -- through the CLI, against the fake `vagrant` ---------------------------------------------

@pytest.fixture
def fake(tmp_path, monkeypatch):
    fake = fake_vagrant.use_for_the_cli(tmp_path, monkeypatch)
    monkeypatch.setattr(vagrant_rotate, "POLL_S", 0.0)

    # Each machine's etcd serves the server certificate of the user-data it was last
    # provisioned with; every fleetd stays registered; every etcd serves.
    def served_serial(url: str) -> int | None:
        ip = url.split("//")[1].split(":")[0]
        mine = [r for r in fake.provisioned() if r["machine"] == f"core-0{ip[-1]}"]
        if not mine:
            return None
        files = {f["path"]: f["content"]
                 for f in yaml.safe_load(mine[-1]["user_data"])["write_files"]}
        pem = files["/etc/ssl/etcd/server.pem"].encode()
        return x509.load_pem_x509_certificate(pem).serial_number

    monkeypatch.setattr(vagrant_lifecycle, "_probes", lambda access: Probes(
        served_serial, lambda: {ip for _n, ip in access.nodes}, lambda url: True))
    return fake


def _up(fake, run_cli, tmp_path):
    """A rendered cluster whose machines the fake runs, with the payload and the SSH files
    `up` leaves beside the manifest."""
    cluster = str(CLUSTERS / "vagrant.yaml")
    assert run_cli("render", cluster).code == 0
    out = tmp_path / "out" / "vagrant"
    for name in ("vagrant-payload.tar", "ssh-config", "known_hosts"):
        (out / name).write_text(name)
    for name in NAMES:
        fake.set_state(name, "running")
    return cluster, out


def _crl_serials(user_data: str) -> set[int]:
    files = {f["path"]: f["content"] for f in yaml.safe_load(user_data)["write_files"]}
    return pki.revoked_serials(files["/etc/ssl/etcd/crl.pem"])


def test_rotate_provisions_each_machine_then_the_revocation_list_then_restarts_etcd(
        fake, run_cli, tmp_path):
    cluster, out = _up(fake, run_cli, tmp_path)
    old = {i.name: i.serial for i in pki.inventory(pki.pki_dir("vagrant"))}
    result = run_cli("certs", "rotate", cluster)
    assert result.code == 0, result.err
    assert "rolled onto 3 running nodes one at a time" in result.out
    new = {i.name: i.serial for i in pki.inventory(pki.pki_dir("vagrant"))}

    assert [a[0:2] for a in fake.argvs() if a[0] != "status"] == (
        [["provision", n] for n in NAMES] * 2 + [["ssh", n] for n in NAMES])
    assert fake.ssh_commands() == [(n, "sudo systemctl restart etcd2.service") for n in NAMES]
    first, second = fake.provisioned()[:3], fake.provisioned()[3:]
    for record in fake.provisioned():
        assert record["payload"]  # the payload stayed beside the manifest
    # The first round: new certificates, the old ones not revoked yet (a machine still on
    # them must be served); the second: the revocation list with every old serial.
    retired = {old[n] for n in old if n != "ca"}
    assert all(not _crl_serials(r["user_data"]) & retired for r in first)
    assert all(_crl_serials(r["user_data"]) >= retired for r in second)
    assert new["core-02-server"] != old["core-02-server"]
    assert {p.name for p in out.iterdir()} >= {"vagrant-payload.tar", "ssh-config",
                                               "known_hosts", "user-data-1", "manifest.json"}
    assert (out / "ssh-config").read_text() == "ssh-config"


def test_rotate_refuses_a_cluster_with_a_machine_halted_before_issuing_anything(
        fake, run_cli, tmp_path):
    cluster, _out = _up(fake, run_cli, tmp_path)
    fake.set_state("core-02", "shutoff")
    before = {i.name: i.serial for i in pki.inventory(pki.pki_dir("vagrant"))}
    result = run_cli("certs", "rotate", cluster)
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "provision: vagrant: core-02 is poweroff (vagrant status): a machine takes new "
        f"certificates only while it runs; start it (`provision node start core-02 -c "
        f"{cluster}`) and rotate again (no certificate was issued)"]
    assert {i.name: i.serial for i in pki.inventory(pki.pki_dir("vagrant"))} == before
    assert fake.provisioned() == []


def test_a_cluster_with_no_machine_created_is_rendered_again_keeping_the_payload(
        fake, run_cli, tmp_path):
    cluster, out = _up(fake, run_cli, tmp_path)
    for name in NAMES:
        fake.set_state(name, "not_created")
    result = run_cli("certs", "rotate", cluster)
    assert result.code == 0, result.err
    assert "in the rendered user-data" in result.out
    assert fake.provisioned() == []
    assert (out / "vagrant-payload.tar").is_file()
    retired = set(pki.retired(pki.pki_dir("vagrant")))
    assert _crl_serials((out / "user-data-2").read_text()) >= retired


def test_vagrants_own_error_reaches_the_user_as_one_line(fake, run_cli, tmp_path):
    cluster, _out = _up(fake, run_cli, tmp_path)
    fake.fail("ssh", "core-02", stderr="VM must be running to open SSH connection. Run "
                                       "`vagrant up`\nto start the virtual machine.\n")
    result = run_cli("certs", "rotate", cluster)
    assert result.code == 2
    assert result.err.strip().splitlines()[-1] == (
        "provision: vagrant ssh core-02: VM must be running to open SSH connection. Run "
        "`vagrant up` to start the virtual machine.")
    assert fake.ssh_commands() == [("core-01", "sudo systemctl restart etcd2.service")]
