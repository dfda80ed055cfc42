"""The manifest: one typed record that render writes and every provider reads; a corrupt or
old one is one clear line."""

from __future__ import annotations

import json

import pytest

from provision.errors import UserError
from provision.render.discovery import resolve
from provision.render.manifest import Manifest
from provision.render.pipeline import manifest as render_manifest
from provision.spec.build import load_cluster
from tests.conftest import CLUSTERS

EXAMPLES = ["local.yaml", "custom-etcd.yaml", "dns-srv.yaml", "large.yaml", "vagrant.yaml",
            "vagrant-lxc.yaml", "nspawn.yaml"]


def rendered(example: str, tmp_path) -> Manifest:
    cluster, _ = load_cluster(str(CLUSTERS / example))
    disc, _ = resolve(cluster, tmp_path, fetch=lambda url, timeout: "unused")
    return render_manifest(cluster, disc, False)


@pytest.mark.parametrize("example", EXAMPLES)
def test_what_render_writes_reads_back_the_same(example, tmp_path):
    made = rendered(example, tmp_path)
    path = tmp_path / "manifest.json"
    path.write_text(made.to_json())
    read = Manifest.from_file(tmp_path)
    assert read == made and read.path == path
    assert read.to_json() == made.to_json()


def test_the_keys_the_vagrantfile_reads_stay(tmp_path):
    data = json.loads(rendered("vagrant-lxc.yaml", tmp_path).to_json())
    assert data["version"] == 2 and data["generator"] == "provision"
    assert {"source", "nodes", "vagrant"} <= set(data)
    node = data["nodes"][0]
    assert {"name", "hostname", "ip", "user_data", "vagrant"} <= set(node)
    assert set(node["vagrant"]) == {"box", "box_url", "box_version", "cpus", "memory", "gui",
                                    "lxc_container"}
    assert set(data["vagrant"]) == {"provider", "payload", "lxc"}
    assert set(data["vagrant"]["lxc"]) == {"bridge", "prefix_length", "gateway"}


def _edit(data: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return data


_DELETE = object()
BAD = {
    "old version": ("version", 1, "manifest version 1 is not this provision's (2)"),
    "not ours": ("generator", "other", "manifest version 2 is not this provision's"),
    "no client port": ("etcd.client_port", _DELETE,
                       "`etcd.client_port` is missing or not an integer"),
    "port as text": ("etcd.peer_port", "2380", "`etcd.peer_port` is missing or not an integer"),
    "port as bool": ("etcd.peer_port", True, "`etcd.peer_port` is missing or not an integer"),
    "unknown mode": ("etcd.discovery.mode", "carrier-pigeon",
                     "`etcd.discovery.mode` is 'carrier-pigeon', not a discovery mode"),
    "endpoint not text": ("etcd.endpoints", [1], "`etcd.endpoints` must list only strings"),
    "node without user data": ("nodes.0.user_data", _DELETE,
                               "`nodes[0].user_data` is missing or not a string"),
    "node without ip": ("nodes.0.ip", _DELETE, "nodes[0] has no `name` or `ip`"),
    "no nodes": ("nodes", [], "not a node manifest (no `nodes`)"),
    "tls as text": ("tls", "yes", "`tls` is missing or not true or false"),
    "lxc without bridge": ("vagrant.lxc.bridge", _DELETE,
                           "`vagrant.lxc.bridge` is missing or not a string"),
}


@pytest.mark.parametrize(("field", "value", "message"), BAD.values(), ids=BAD)
def test_a_corrupt_or_old_manifest_is_one_line(field, value, message, tmp_path):
    data = _edit(json.loads(rendered("custom-etcd.yaml", tmp_path).to_json()), field, value)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as caught:
        Manifest.from_file(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "render it again" in str(caught.value)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


@pytest.mark.parametrize(("text", "message"), [
    (None, "node manifest not found"),
    ("[1, 2]", "not a node manifest"),
    ("{", "not valid JSON"),
])
def test_a_missing_or_unparsable_manifest_is_one_line(text, message, tmp_path):
    path = tmp_path / "manifest.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError, match=message):
        Manifest.from_file(path)
