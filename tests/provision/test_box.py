"""The lxc box's and the machines' payload's recipe and keys, the debs apt resolves for
plain bookworm machines, where a rendered cluster's payload goes, and the manifest's
Vagrant settings (pure, or small files only: nothing is built or booted here)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import textwrap

import pytest

from provision.box import debs, recipe
from provision.box.netns import in_namespace
from provision.box.payload import (
    INSTALL_SCRIPT_SOURCE,
    Payload,
    manifest_payload_path,
    place_payload,
)
from provision.errors import UserError
from provision.image import recipe as image_recipe
from provision.spec.build import load_cluster
from tests.conftest import CLUSTERS


def test_the_image_base_key_is_what_it_was_and_the_box_base_differs():
    image = image_recipe.base_spec("http://deb.debian.org/debian")
    assert set(image) == {"suite", "variant", "packages", "format", "mirror"}
    box = image_recipe.base_spec("http://deb.debian.org/debian", recipe.BOX_BASE)
    assert box["disable"] == ["systemd-networkd-wait-online.service"]
    assert image_recipe.base_key(box) != image_recipe.base_key(image)
    # A plain box: no etcd, no pydbus, no project (the Vagrantfile installs them).
    assert not {"etcd-server", "python3-gi", "python3-pydbus"} & set(box["packages"])
    assert {"systemd-sysv", "openssh-server", "sudo", "python3"} <= set(box["packages"])


@pytest.mark.parametrize("change", [
    pytest.param({"base_key": "base-ffff"}, id="base"),
    pytest.param({"insecure_key": "ssh-ed25519 AAAA other"}, id="insecure-key"),
    pytest.param({"provider": "other"}, id="provider"),
])
def test_the_box_key_follows_its_recipe(change):
    args = {"provider": "lxc", "base_key": "base-1", "insecure_key": "ssh-rsa AAAA vagrant"}
    before = recipe.box_key(recipe.box_spec(**args))
    after = recipe.box_key(recipe.box_spec(**{**args, **change}))
    assert before != after and before.startswith("box-lxc-")


def test_the_box_metadata_carries_no_template_options_and_our_key():
    metadata = recipe.box_metadata("box-lxc-1234")
    assert metadata == {"provider": "lxc", "version": "1.0.0", "provision-box": "box-lxc-1234"}
    assert "template-opts" not in metadata
    assert "lxc.apparmor.profile = unconfined" in recipe.LXC_CONFIG


@pytest.mark.parametrize("text, user, ids", [
    pytest.param("root:x:0:0::/root:/bin/bash\nvagrant:x:1000:1000::/home/vagrant:/bin/bash\n",
                 "vagrant", (1000, 1000), id="found"),
    pytest.param("root:x:0:0::/root:/bin/bash\n", "vagrant", None, id="missing"),
    pytest.param("vagrant:x:abc:1::/:/bin/sh\n", "vagrant", None, id="not-a-number"),
    pytest.param("vagrantx:x:5:5::/:/bin/sh\n", "vagrant", None, id="prefix-only"),
])
def test_passwd_ids(text, user, ids):
    assert recipe.passwd_ids(text, user) == ids


def test_vagrant_keeps_a_box_name_with_a_slash_under_its_own_spelling():
    assert recipe.vagrant_box_dir("provision/bookworm") == "provision-VAGRANTSLASH-bookworm"


PAYLOAD_ARGS = {"project": {"version": "0.1.0", "requirements": ["pyyaml>=6"],
                            "source": "aaaa"},
                "dependency_wheels": "wheels-1",
                "debs": [("etcd-server", "3.4.23-4+b4"), ("python3-gi", "3.42.2-3+b1")],
                "install_script": "#!/bin/sh\n"}


@pytest.mark.parametrize("change", [
    pytest.param({"project": {**PAYLOAD_ARGS["project"], "source": "bbbb"}}, id="source"),
    pytest.param({"dependency_wheels": "wheels-2"}, id="dependencies"),
    pytest.param({"debs": [("etcd-server", "3.4.23-4+b5"), ("python3-gi", "3.42.2-3+b1")]},
                 id="deb-version"),
    pytest.param({"install_script": "#!/bin/sh\necho\n"}, id="install-script"),
])
def test_the_payload_key_follows_what_goes_into_it(change):
    before = recipe.payload_key(recipe.payload_spec(**PAYLOAD_ARGS))
    after = recipe.payload_key(recipe.payload_spec(**{**PAYLOAD_ARGS, **change}))
    assert before != after and before.startswith("payload-")
    reordered = {**PAYLOAD_ARGS, "debs": list(reversed(PAYLOAD_ARGS["debs"]))}
    assert recipe.payload_key(recipe.payload_spec(**reordered)) == before


SIMULATION = """\
NOTE: This is only a simulation!
Inst libc6 (2.36-9+deb12u14 Debian:12.13/stable [amd64])
Inst etcd-server (3.4.23-4+b4 Debian:12.13/stable [amd64])
Inst libffi8:amd64 (3.4.4-1 Debian:12.13/stable [amd64])
Conf libc6 (2.36-9+deb12u14 Debian:12.13/stable [amd64])
Inst adduser (3.134 Debian:12.13/stable [all])
"""


def test_apts_simulation_lists_each_package_once_with_its_version():
    assert debs.parse_simulation(SIMULATION) == [
        ("libc6", "2.36-9+deb12u14"), ("etcd-server", "3.4.23-4+b4"), ("libffi8", "3.4.4-1"),
        ("adduser", "3.134")]


def test_essential_packages_are_read_from_apts_available_list():
    available = textwrap.dedent("""\
        Package: dpkg
        Essential: yes
        Version: 1.21.22

        Package: etcd-server
        Version: 3.4.23-4+b4

        Package: bash
        Priority: required
        Essential: yes
        """)
    assert debs.essential_packages(available) == ["bash", "dpkg"]


def test_only_what_the_baseline_lacks_is_carried():
    closure = [("libc6", "2.36"), ("etcd-server", "3.4.23"), ("adduser", "3.134"),
               ("python3-gi", "3.42")]
    baseline = [("libc6", "2.36"), ("dpkg", "1.21"), ("adduser", "3.134")]
    assert debs.beyond_baseline(closure, baseline) == [("etcd-server", "3.4.23"),
                                                       ("python3-gi", "3.42")]


def test_a_changed_package_list_changes_the_lists_stamp(tmp_path):
    listed = tmp_path / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
    listed.write_text("Package: a\n")
    (tmp_path / "lock").write_text("")
    before = debs.lists_stamp(tmp_path)
    assert debs.lists_stamp(tmp_path) == before
    listed.write_text("Package: a\n\nPackage: b\n")
    assert debs.lists_stamp(tmp_path) != before


def _manifest(tmp_path, vagrant: object) -> object:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"version": 2, "nodes": [], "vagrant": vagrant}))
    return path


@pytest.mark.parametrize("vagrant, message", [
    pytest.param(None, "no `vagrant.payload` in this manifest", id="no-settings"),
    pytest.param({"provider": None}, "no `vagrant.payload` in this manifest", id="no-payload"),
    pytest.param({"payload": "../elsewhere.tar"}, "`vagrant.payload` must be a file name",
                 id="a-path"),
    pytest.param({"payload": ""}, "`vagrant.payload` must be a file name", id="empty"),
])
def test_a_manifest_without_a_payload_name_is_refused_in_one_line(tmp_path, vagrant, message):
    with pytest.raises(UserError) as caught:
        manifest_payload_path(_manifest(tmp_path, vagrant))
    assert message in str(caught.value) and "provision render" in str(caught.value)


def test_a_missing_manifest_is_named(tmp_path):
    with pytest.raises(UserError, match="cannot read the node manifest"):
        manifest_payload_path(tmp_path / "nowhere")


def test_the_payload_lands_beside_the_manifest_whole(tmp_path):
    manifest = _manifest(tmp_path, {"payload": "vagrant-payload.tar"})
    cached = tmp_path / "cache" / "payload.tar"
    cached.parent.mkdir()
    cached.write_bytes(b"new payload")
    target = manifest_payload_path(manifest)
    target.write_bytes(b"old payload")
    payload = Payload("payload-1", cached, False, 0.0)
    assert place_payload(payload, target) == target == tmp_path / "vagrant-payload.tar"
    assert target.read_bytes() == b"new payload"
    assert os.path.samefile(target, cached)  # a hard link: no copy of ~50 MB per cluster
    assert place_payload(payload, target) == target  # the same file already: nothing to do
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "manifest.json",
                                                          "vagrant-payload.tar"]


def test_the_install_script_is_plain_sh():
    checked = subprocess.run(["sh", "-n", str(INSTALL_SCRIPT_SOURCE)], capture_output=True,
                             text=True, check=False)
    assert checked.returncode == 0, checked.stderr


def test_commands_in_the_namespace_get_its_sysfs_and_the_hosts_cgroups():
    argv = in_namespace("pt-ns", ["vagrant", "up", "--provider=lxc"])
    assert argv[:6] == ["nsenter", "--net=/run/netns/pt-ns", "unshare", "--mount",
                        "--propagation", "slave"]
    script = argv[argv.index("-ec") + 1]
    assert script.index("mount --rbind /sys/fs/cgroup") < script.index("mount -t sysfs") \
        < script.index('mount --rbind "$keep" /sys/fs/cgroup')
    assert argv[-4:] == ["sh", "vagrant", "up", "--provider=lxc"]


# -- the cluster's Vagrant settings and the manifest ---------------------------------------------

def test_lxc_clusters_default_to_the_box_provision_builds(tmp_path):
    source = tmp_path / "c.yaml"
    source.write_text("name: c\nprovider: vagrant\nvagrant: {provider: lxc}\n"
                      "nodes: {count: 2}\netcd: {discovery: {mode: static}}\n")
    cluster, _ = load_cluster(source)
    assert cluster.vagrant.box == recipe.BOX_NAME == "provision/bookworm"
    assert {n.vagrant.box for n in cluster.nodes} == {"provision/bookworm"}
    source.write_text("name: c\nprovider: vagrant\nnodes: {count: 1}\n"
                      "etcd: {discovery: {mode: static}}\n")
    cluster, _ = load_cluster(source)
    assert cluster.vagrant.box == "debian/bookworm64" and cluster.vagrant.provider is None


@pytest.mark.parametrize("vagrant, message", [
    pytest.param("{provider: docker}", "vagrant.provider", id="unknown-provider"),
    pytest.param("{bridge: 'a bridge name too long'}", "network interface name",
                 id="bad-bridge"),
])
def test_bad_vagrant_settings_are_positioned(run_cli, tmp_path, vagrant, message):
    source = tmp_path / "c.yaml"
    source.write_text(f"name: c\nprovider: vagrant\nvagrant: {vagrant}\nnodes: {{count: 1}}\n"
                      "etcd: {discovery: {mode: static}}\n")
    result = run_cli("validate", str(source))
    assert result.code == 2
    assert result.err.startswith(f"{source}:3:") and message in result.err


def test_a_node_cannot_have_its_own_provider(run_cli, tmp_path):
    source = tmp_path / "c.yaml"
    source.write_text("name: c\nprovider: vagrant\nvagrant: {provider: lxc}\nnodes:\n"
                      "  count: 2\n  overrides: {core-02: {vagrant: {provider: libvirt}}}\n"
                      "etcd: {discovery: {mode: static}}\n")
    result = run_cli("validate", str(source))
    assert result.code == 2 and "provider" in result.err


def test_the_manifest_carries_what_the_vagrantfile_needs(run_cli, tmp_path):
    out = tmp_path / "out"
    assert run_cli("render", str(CLUSTERS / "vagrant-lxc.yaml"), "-o", str(out)).code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == 2
    assert manifest["vagrant"] == {
        "provider": "lxc", "payload": "vagrant-payload.tar",
        "lxc": {"bridge": "br0", "prefix_length": 24, "gateway": "172.17.8.1"}}
    assert [n["vagrant"]["lxc_container"] for n in manifest["nodes"]] == [
        "lxc-core-01", "lxc-core-02", "lxc-core-03"]
    assert {n["vagrant"]["box"] for n in manifest["nodes"]} == {"provision/bookworm"}


def test_no_gateway_when_a_node_holds_the_networks_first_address(run_cli, tmp_path):
    source = tmp_path / "c.yaml"
    source.write_text("name: c\nprovider: vagrant\nvagrant: {provider: lxc}\n"
                      "network: {cidr: 10.9.0.0/24, start: 1}\nnodes: {count: 2}\n"
                      "etcd: {discovery: {mode: static}}\n")
    assert run_cli("render", str(source), "-o", str(tmp_path / "out")).code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["vagrant"]["lxc"] == {"bridge": "br0", "prefix_length": 24,
                                          "gateway": None}


def test_box_build_knows_only_the_lxc_provider(run_cli):
    with pytest.raises(SystemExit) as caught:
        run_cli("box", "build", "--provider", "virtualbox")
    assert caught.value.code == 2


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                    reason="creating a network namespace needs root and iproute2")
def test_the_bridge_keeps_its_address_when_a_port_with_a_lower_one_comes_and_goes():
    from provision.box.netns import BridgeNetwork, bridge_mac

    network = BridgeNetwork(f"pt-mac-{os.getpid()}", "br0",
                            ipaddress.IPv4Interface("172.31.250.1/24"))
    network.create()
    try:
        def bridge_address() -> str:
            return subprocess.run(["ip", "-n", network.namespace, "-brief", "link", "show",
                                   "br0"], capture_output=True, text=True, check=True
                                  ).stdout.split()[2]

        assert bridge_address() == bridge_mac(network.namespace)
        for command in (["link", "add", "vport", "address", "00:00:00:00:00:01", "type",
                         "veth", "peer", "name", "vpeer"],
                        ["link", "set", "vport", "master", "br0"],
                        ["link", "set", "vport", "up"]):
            subprocess.run(["ip", "-n", network.namespace, *command], check=True)
        assert bridge_address() == bridge_mac(network.namespace)
        subprocess.run(["ip", "-n", network.namespace, "link", "del", "vport"], check=True)
        assert bridge_address() == bridge_mac(network.namespace)
    finally:
        network.delete()
    assert not network.exists()
