"""The Vagrant driver against a fake `vagrant` first on PATH (tests/support/fake_vagrant.py).

What is checked is what the driver asks of Vagrant (argv, working directory, environment,
order) and what the user gets back (statuses, progress, Vagrant's own error text).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from provision.cli.root import main
from provision.errors import OperationFailed, UserError
from provision.providers import FAILED, READY, STARTING, STOPPED, STOPPING, NodeStatus
from provision.providers.vagrant import NOT_INSTALLED, VagrantProvider, read_manifest
from tests.conftest import CLUSTERS
from tests.support import fake_vagrant

NODES = ["core-01", "core-02", "core-03"]
IPS = ["172.17.8.101", "172.17.8.102", "172.17.8.103"]

LIBVIRT_DOWN = ("Error while connecting to Libvirt: Error making a connection to libvirt URI "
                "qemu:///system:\n"
                "Call to virConnectOpen failed: Failed to connect socket to "
                "'/var/run/libvirt/libvirt-sock': No such file or directory\n")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    fake = fake_vagrant.install(tmp_path / "fake")
    monkeypatch.setenv("PATH", f"{fake.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return fake


@pytest.fixture
def manifest(tmp_path):
    out = tmp_path / "out" / "vagrant"
    assert main(["render", str(CLUSTERS / "vagrant.yaml"), "-o", str(out)]) == 0
    return out / "manifest.json"


@pytest.fixture
def root(tmp_path):
    """A directory standing in for the checkout: it holds the Vagrantfile."""
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "Vagrantfile").write_text("# never read: the fake vagrant defines the machines\n")
    return root


@pytest.fixture
def sink():
    return io.StringIO()


@pytest.fixture
def provider(root, tmp_path, sink):
    return VagrantProvider(root, env={"VAGRANT_HOME": str(tmp_path / "vagrant-home")},
                           stderr=sink)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def __call__(self, node: str, phase: str, detail: str) -> None:
        self.events.append((node, phase, detail))


def test_up_runs_vagrant_up_per_node_in_order_from_the_checkout(provider, fake, manifest,
                                                                root, tmp_path, capfd):
    progress = Recorder()
    provider.up(manifest, progress)

    assert fake.argvs() == [["up", name] for name in NODES]
    for call in fake.calls():
        assert call["cwd"] == str(root)
        assert call["env"]["PROVISION_MANIFEST"] == str(manifest)
        assert call["env"]["VAGRANT_HOME"] == str(tmp_path / "vagrant-home")
    assert progress.events == [event for name in NODES for event in
                               [(name, STARTING, f"vagrant up {name}"), (name, READY, "running")]]
    assert fake.states() == dict.fromkeys(NODES, "running")
    # Vagrant's own output reaches the user (stdout is not swallowed) …
    assert "Bringing machine 'core-02' up with 'libvirt' provider" in capfd.readouterr().out
    # … and a plain `vagrant ssh core-01` in the checkout now means this cluster.
    assert (root / "out" / ".last-manifest").read_text() == f"{manifest}\n"


def test_up_again_is_harmless(provider, fake, manifest):
    provider.up(manifest)
    provider.up(manifest)
    assert fake.argvs() == [["up", name] for name in NODES] * 2
    assert fake.states() == dict.fromkeys(NODES, "running")


def test_status_is_one_machine_readable_call_with_a_status_per_node(provider, fake, manifest,
                                                                     root):
    assert provider.status(manifest) == [NodeStatus(name, ip, "not_created", "libvirt")
                                         for name, ip in zip(NODES, IPS, strict=True)]
    fake.set_state("core-02", "running")
    assert [s.state for s in provider.status(manifest)] == ["not_created", "running",
                                                            "not_created"]
    assert fake.argvs() == [["status", "--machine-readable"]] * 2
    assert {c["cwd"] for c in fake.calls()} == {str(root)}
    assert {c["env"]["PROVISION_MANIFEST"] for c in fake.calls()} == {str(manifest)}
    assert not (root / "out").exists(), "status must not move the last-manifest pointer"


def test_down_destroys_every_node_with_force_in_reverse_order(provider, fake, manifest, root):
    provider.up(manifest)
    progress = Recorder()
    provider.down(manifest, progress=progress)

    assert fake.argvs()[3:] == [["destroy", name, "--force"] for name in reversed(NODES)]
    assert {c["env"]["PROVISION_MANIFEST"] for c in fake.calls()} == {str(manifest)}
    assert fake.states() == dict.fromkeys(NODES, "not_created")
    assert progress.events == [event for name in reversed(NODES) for event in
                               [(name, STOPPING, f"vagrant destroy {name} --force"),
                                (name, STOPPED, "destroyed")]]
    assert (root / "out" / ".last-manifest").exists(), "only --purge forgets the cluster"
    provider.down(manifest, purge=True)
    assert not (root / "out" / ".last-manifest").exists()


def test_a_relative_manifest_or_its_directory_is_passed_as_an_absolute_file(
        provider, fake, manifest, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    provider.status("out/vagrant")
    provider.status("out/vagrant/manifest.json")
    assert [c["env"]["PROVISION_MANIFEST"] for c in fake.calls()] == [str(manifest)] * 2
    assert provider.user_env("out/vagrant") == {"PROVISION_MANIFEST": str(manifest)}


# name: (operation, scripted failure, expected calls, expected start of the message)
FAILURES = {
    "up of the second node": (
        "up", dict(command="up", machine="core-02", stderr=LIBVIRT_DOWN),
        [["up", "core-01"], ["up", "core-02"]],  # core-03 is not attempted
        "vagrant up core-02 failed (exit status 1):"),
    "status": (
        "status", dict(command="status", stderr=LIBVIRT_DOWN),
        [["status", "--machine-readable"]],
        "vagrant status failed (exit status 1):"),
    "destroy of one node": (
        "down", dict(command="destroy", machine="core-02", stderr=LIBVIRT_DOWN),
        [["destroy", name, "--force"] for name in reversed(NODES)],  # the others still go
        "vagrant destroy core-02 failed (exit status 1):"),
}


@pytest.mark.parametrize("operation, failure, calls, head", FAILURES.values(), ids=FAILURES)
def test_vagrants_error_text_reaches_the_user(provider, fake, manifest, sink, operation,
                                              failure, calls, head):
    fake.fail(**failure)
    with pytest.raises(OperationFailed) as caught:
        getattr(provider, operation)(manifest)

    message = str(caught.value)
    assert message.startswith(head)
    assert "Failed to connect socket to '/var/run/libvirt/libvirt-sock'" in message
    assert "Error while connecting to Libvirt" in message
    assert fake.argvs() == calls
    assert sink.getvalue() == LIBVIRT_DOWN, "echoed as it came, not only in the error"


def test_a_failing_node_is_reported_through_progress(provider, fake, manifest):
    fake.fail("up", "core-02", stderr=LIBVIRT_DOWN)
    progress = Recorder()
    with pytest.raises(OperationFailed):
        provider.up(manifest, progress)
    assert progress.events[-1] == (
        "core-02", FAILED, "Call to virConnectOpen failed: Failed to connect socket to "
                           "'/var/run/libvirt/libvirt-sock': No such file or directory")


def test_stderr_goes_to_our_stderr_by_default(root, fake, manifest, capfd):
    fake.fail("up", "core-01", stderr="The box 'coreos-alpha' could not be found.\n")
    with pytest.raises(OperationFailed, match="The box 'coreos-alpha' could not be found"):
        VagrantProvider(root).up(manifest)
    assert "The box 'coreos-alpha' could not be found." in capfd.readouterr().err


def test_machine_readable_errors_on_stdout_are_in_the_message(provider, fake, manifest):
    fake.fail("status", stdout=(
        "1700000000,,error-exit,Vagrant::Errors::VagrantfileLoadError,There was an error "
        "loading a Vagrantfile%!(VAGRANT_COMMA) see below.\\nPath: Vagrantfile\n"), stderr="")
    with pytest.raises(OperationFailed) as caught:
        provider.status(manifest)
    assert str(caught.value) == ("vagrant status failed (exit status 1):\n"
                                 "  There was an error loading a Vagrantfile, see below. "
                                 "Path: Vagrantfile")


def test_a_silent_failure_says_so(provider, fake, manifest):
    fake.fail("up", "core-01", stderr="", exit_code=3)
    with pytest.raises(OperationFailed) as caught:
        provider.up(manifest)
    assert str(caught.value) == ("vagrant up core-01 failed (exit status 3); Vagrant printed "
                                 "no error (see its output above)")


@pytest.mark.parametrize("operation", ["up", "status", "down"])
def test_missing_vagrant_is_a_user_error(provider, manifest, root, tmp_path, monkeypatch,
                                         operation):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(UserError) as caught:
        getattr(provider, operation)(manifest)
    assert str(caught.value) == f"provision: {NOT_INSTALLED}"
    assert caught.value.exit_code == 2
    assert not (root / "out").exists()


BAD_MANIFESTS = {
    "missing": (None, None, "node manifest not found; run `provision render CLUSTER.yaml` first"),
    "not JSON": ('{"nodes": [\n  {"name": "core-01",\n', "3:1",
                 "not valid JSON (Expecting property name enclosed in double quotes)"),
    "no nodes": ('{"version": 1}\n', None, "not a node manifest (no `nodes`)"),
    "node without ip": ('{"nodes": [{"name": "core-01"}]}\n', None,
                        "nodes[0] has no `name` or `ip`"),
}


@pytest.mark.parametrize("text, position, message", BAD_MANIFESTS.values(), ids=BAD_MANIFESTS)
def test_a_bad_manifest_is_a_user_error_before_vagrant_runs(provider, fake, tmp_path, text,
                                                            position, message):
    path = tmp_path / "manifest.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as caught:
        provider.up(path)
    where = f"{path}:{position}" if position else str(path)
    assert str(caught.value).startswith(f"{where}: {message}")
    assert fake.calls() == []


def test_vms_of_another_cluster_block_up(provider, fake, manifest, root):
    leftover = root / ".vagrant" / "machines" / "etcd-1" / "libvirt"
    leftover.mkdir(parents=True)
    (leftover / "id").write_text("0f0e")
    (root / ".vagrant" / "machines" / "core-01" / "libvirt").mkdir(parents=True)
    with pytest.raises(UserError, match=r"VMs of another cluster still exist \(etcd-1\)"):
        provider.up(manifest)
    assert fake.calls() == []


def test_a_checkout_without_vagrantfile_is_a_user_error(tmp_path, fake, manifest):
    with pytest.raises(UserError, match="Vagrantfile: not found"):
        VagrantProvider(tmp_path / "elsewhere").status(manifest)


def test_read_manifest_keeps_names_and_ips_in_order(manifest):
    read = read_manifest(manifest.parent)
    assert read.path == manifest
    assert [(n.name, n.ip) for n in read.nodes] == list(zip(NODES, IPS, strict=True))
    assert json.loads(manifest.read_text())["cluster"] == "vagrant"


def test_node_stop_and_start_are_vagrant_halt_and_up_of_that_node(provider, fake, manifest):
    provider.up(manifest)
    provider.halt(manifest, "core-02")
    assert fake.states()["core-02"] == "shutoff"
    provider.start(manifest, "core-02")
    assert fake.argvs()[-2:] == [["halt", "core-02"], ["up", "core-02"]]
    assert fake.states() == dict.fromkeys(NODES, "running")


def test_a_node_not_in_the_cluster_is_a_user_error_before_vagrant_runs(provider, fake,
                                                                       manifest):
    with pytest.raises(UserError, match="core-09: no such node .* core-01, core-02, core-03"):
        provider.halt(manifest, "core-09")
    assert fake.argvs() == []


SSH_CONFIG = """\
Host core-01
  HostName 172.17.8.101
  User vagrant
  Port 22
  IdentityFile /x/.vagrant/machines/core-01/lxc/private_key

Host core-02
  HostName 172.17.8.102
  User vagrant
"""


def test_ssh_config_hosts_also_match_their_address():
    from provision.providers.vagrant import hosts_by_address

    got = hosts_by_address(SSH_CONFIG)
    assert got.splitlines()[0] == "Host core-01 172.17.8.101"
    assert "Host core-02 172.17.8.102" in got.splitlines()
    assert hosts_by_address(got) == got  # already there: unchanged
    assert got.count("IdentityFile") == 1


# Vagrant 2.3's own error texts (templates/locales/en.yml), as `vagrant up` prints them.
BOX_NOT_FOUND = """\
The box 'provision/nonexistent' could not be found or
could not be accessed in the remote catalog. If this is a private
box on HashiCorp's Vagrant Cloud, please verify you're logged in via
`vagrant login`. Also, please double-check the name. The expanded
URL and error message are shown below:

URL: ["http://127.0.0.1:9/provision/nonexistent"]
Error: Failed to connect to 127.0.0.1 port 9 after 6 ms: Couldn't connect to server"""
PROVIDER_NOT_FOUND = """\
The provider 'lxc' could not be found, but was requested to
back the machine 'core-01'. Please use a provider that exists.

Vagrant knows about the following providers: virtualbox, docker, hyperv, libvirt"""
CONFIG_INVALID = """\
There are errors in the configuration of this machine. Please fix
the following errors and try again:

vm:
* The hostname set for the VM 'core-01' should only contain letters, numbers,
hyphens or dots. It cannot start with a hyphen or dot."""
NOT_USABLE = """\
The provider 'virtualbox' that was requested to back the machine
'core-01' is reporting that it isn't usable on this system. The
reason is shown below:

VirtualBox is complaining that the installation is incomplete."""
SSH_FAILED = """\
The SSH command responded with a non-zero exit status. Vagrant
assumes that this means the command failed. The output for this command
should be in the log above. Please read the output to determine what
went wrong."""


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(("stderr", "want"), [
    pytest.param(BOX_NOT_FOUND, "The box 'provision/nonexistent' could not be found or could "
                 "not be accessed in the remote catalog.", id="box missing"),
    pytest.param("==> core-01: warning: something\n" + PROVIDER_NOT_FOUND,
                 "The provider 'lxc' could not be found, but was requested to back the "
                 "machine 'core-01'. Please use a provider that exists. Vagrant knows",
                 id="provider plugin not installed"),
    pytest.param(CONFIG_INVALID, "There are errors in the configuration of this machine. "
                 "Please fix the following errors and try again: vm: * The hostname",
                 id="bad machine setting"),
    pytest.param(NOT_USABLE, "The provider 'virtualbox' that was requested to back the "
                 "machine 'core-01' is reporting that it isn't usable", id="provider unusable"),
    pytest.param("The machine with the name 'core-09' was not found configured for\n"
                 "this Vagrant environment.", "The machine with the name 'core-09' was not "
                 "found configured for this Vagrant environment.", id="unknown machine"),
    pytest.param("/o/manifest.json: nodes[1] (core-02) has no `ip`; render it again",
                 "/o/manifest.json: nodes[1] (core-02) has no `ip`; render it again",
                 id="the Vagrantfile refuses the manifest"),
    # failures that are not the user's: exit 1 with the last lines
    pytest.param(SSH_FAILED, None, id="provisioner failed"),
    pytest.param("/usr/lib/ruby/vendor_ruby/foo.rb:12:in `bar': undefined method (NoMethodError)",
                 None, id="a crash"),
    pytest.param("/elsewhere/file: no", None, id="a path outside the manifest's directory"),
    pytest.param("", None, id="nothing printed"),
])
def test_which_vagrant_failures_are_the_users(stderr, want):
    from provision.providers.vagrant import user_error_text

    got = user_error_text(_lines(stderr), Path("/o"))
    if want is None:
        assert got is None
    else:
        assert got is not None and got.startswith(want) and "\n" not in got
