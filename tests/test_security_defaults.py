"""Security defaults: the API socket is private, TCP stays on loopback unless allowed,
rendered user-data is 0600, user paths never leave the node root, unit names never become
paths, and hostile YAML values reach cloud-configs and command lines exactly as written."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from fleetd.config import Config, ConfigError, load_config
from fleetd.daemon import Server
from fleetd.fleetctl.targets import unit_name_of
from fleetd.runner.process.environment import NodeEnvironment
from fleetd.runner.process.settings import parse_service_config
from fleetd.runner.process.specifiers import SpecifierContext, expand_variables
from fleetd.runner.process.state import StartError
from fleetd.unit.names import parse_unit_name
from fleetd.unit.unitfile import parse_unit_file
from provision.apply.desired import desired_units
from provision.cli.root import main
from provision.spec.build import load_cluster
from tests.support.etcd import wait_for


# -- fleetd's listeners ------------------------------------------------------------------------
def test_api_socket_is_private(etcd_server):
    base = Path(tempfile.mkdtemp(prefix="fsec-"))
    old = os.umask(0)  # a permissive umask must not widen the socket
    try:
        server = Server(Config(etcd_servers=(etcd_server.url,), state_dir=base / "s",
                               etcd_key_prefix=f"/sec-{uuid.uuid4().hex[:8]}/",
                               public_ip="127.0.0.1", disable_engine=True))
        server.start()
        try:
            wait_for(lambda: server.machine.id in server.registry.machines()[1], 15)
            mode = os.stat(server.config.api_socket_path).st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) in (0o600, 0o660)
        finally:
            server.shutdown()
    finally:
        os.umask(old)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("address", ["0.0.0.0:4001", "[::]:4001", ":4001", "10.1.2.3:4001",
                                     "192.168.0.1:4001", "example.com:4001", "[::ffff:0.0.0.0]:1"])
def test_tcp_listener_refuses_non_loopback_unless_allowed(address, tmp_path):
    with pytest.raises(ConfigError):
        load_config(["--state-dir", str(tmp_path), "--api-address", address], {})
    config = Config(etcd_servers=("http://127.0.0.1:1",), state_dir=tmp_path / "s",
                    api_address=address)
    with pytest.raises(ValueError, match="api_allow_remote"):
        Server(config)
    assert not (tmp_path / "s").exists()


def test_remote_listener_needs_the_explicit_setting(tmp_path):
    config = load_config(["--state-dir", str(tmp_path), "--api-address", "0.0.0.0:4001",
                          "--api-allow-remote", "true"], {})
    assert config.api_address == "0.0.0.0:4001"


# -- rendered files ---------------------------------------------------------------------------
def test_rendered_user_data_is_0600_even_with_a_permissive_umask(tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text("name: demo\nnodes: {count: 2}\n")
    old = os.umask(0)
    try:
        assert main(["render", str(cluster), "-o", str(tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    files = sorted((tmp_path / "out").glob("user-data-*"))
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not stat.S_IMODE((tmp_path / "out").stat().st_mode) & 0o002, "not world-writable"


# -- paths and names from users ----------------------------------------------------------------
@pytest.mark.parametrize("path", ["/../../etc/passwd", "/etc/../../../etc/passwd",
                                  "/link/passwd", "/../" + "x/.." * 50 + "/etc/passwd"])
def test_environment_file_never_leaves_the_node_root(tmp_path, path):
    root = tmp_path / "node"
    root.mkdir()
    (root / "link").symlink_to("/etc")
    env = NodeEnvironment("m", "h", {}, root)
    with pytest.raises(StartError, match="outside the node root"):
        env.host_path(path, "EnvironmentFile")


def test_paths_inside_the_node_root_are_fine(tmp_path):
    env = NodeEnvironment("m", "h", {}, tmp_path)
    assert env.host_path("/etc/environment", "EnvironmentFile") == \
        tmp_path.resolve() / "etc" / "environment"


@pytest.mark.parametrize("arg,name", [("../../etc/passwd.service", "passwd.service"),
                                      ("/etc/systemd/web.service", "web.service"),
                                      ("./a/../b/web@1", "web@1.service")])
def test_fleetctl_turns_paths_into_plain_unit_names(arg, name):
    got = unit_name_of(arg)
    assert got == name and "/" not in got and parse_unit_name(got).full == got


# -- hostile values --------------------------------------------------------------------------
HOSTILE = "a'b\"c $(id) `id` ;x y"  # quotes, command substitution, backticks, ;, spaces
HOSTILE_NO_SPACE = "a'b\"c$(id)`id`;x&|<>"


def _cluster(tmp_path: Path, key: str, path: str) -> Path:
    doc = {
        "name": "demo",
        "nodes": {"count": 1, "metadata": {"region": HOSTILE_NO_SPACE}},
        "etcd": {"discovery": {"mode": "static", "cluster_token": HOSTILE}},
        "write_files": [{"path": "/etc/" + HOSTILE, "content": HOSTILE + "\n" + HOSTILE + "\n"}],
        "units": [{"name": "web@.service", "content": "[Service]\nExecStart=/bin/true\n",
                   "instances": 1,
                   "sidekick": {"port": 8080, "check": "http", "path": path, "key": key}}],
    }
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump(doc))
    return file


def test_hostile_values_reach_the_cloud_config_exactly(tmp_path):
    file = _cluster(tmp_path, "/svc/" + HOSTILE, "/" + HOSTILE)
    assert main(["render", str(file), "-o", str(tmp_path / "out")]) == 0
    data = yaml.safe_load((tmp_path / "out" / "user-data-1").read_text())
    assert data["coreos"]["etcd2"]["initial-cluster-token"] == HOSTILE
    assert data["coreos"]["fleet"]["metadata"] == f"region={HOSTILE_NO_SPACE}"
    [written] = [f for f in data["write_files"] if not f["path"].startswith(
        ("/etc/ssl/etcd/", "/etc/systemd/system/etcd2.service.d/"))]
    assert written["path"] == "/etc/" + HOSTILE
    assert written["content"] == HOSTILE + "\n" + HOSTILE + "\n"


def _sidekick_argv(tmp_path: Path, key: str, path: str) -> tuple[list[str], str, str]:
    cluster, _ = load_cluster(_cluster(tmp_path, key, path))
    [_, side] = desired_units(cluster)
    unit = parse_unit_file(side.text)
    [exec_start] = unit.get("Service", "ExecStart")
    return exec_start, side.name, unit


def _expected(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("key,path", [("/svc/" + HOSTILE, "/" + HOSTILE),
                                      ("/svc/" + HOSTILE_NO_SPACE, "/" + HOSTILE_NO_SPACE)])
def test_sidekick_exec_start_splits_back_to_the_exact_argv(tmp_path, key, path):
    exec_start, name, unit = _sidekick_argv(tmp_path, key, path)
    # As fleetd's runner (and systemd) reads it: specifiers, systemd quoting, $VAR expansion.
    context = SpecifierContext(machine_id="m" * 32, hostname="host")
    config = parse_service_config(unit, parse_unit_name(name), context)
    words = expand_variables(config.exec_start[0].words, {"HOME": "/root"})
    assert _expected(words, "--key") == key + "/1" and _expected(words, "--path") == path
    assert unit.get("Unit", "Description")[0].count("\n") == 0


@pytest.mark.parametrize("key,path", [("/svc/%m", "/%H"), ("/svc/$HOME", "/${HOME}"),
                                      ("/svc/a\\b", "/a\\z")])
def test_sidekick_specifier_and_dollar_values_survive_the_runner(tmp_path, key, path):
    exec_start, name, unit = _sidekick_argv(tmp_path, key, path)
    context = SpecifierContext(machine_id="m" * 32, hostname="host")
    config = parse_service_config(unit, parse_unit_name(name), context)
    words = expand_variables(config.exec_start[0].words, {"HOME": "/root"})
    assert _expected(words, "--key") == key + "/1" and _expected(words, "--path") == path


@pytest.mark.parametrize("field", ["key", "path"])
def test_newlines_in_sidekick_values_are_refused_not_injected(tmp_path, capsys, field):
    values = {"key": "/svc/x", "path": "/p"}
    values[field] = "/x\nExecStartPre=/bin/evil\n#"
    file = _cluster(tmp_path, values["key"], values["path"])
    assert main(["validate", str(file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{file}:") and "U+000A" in err and "Traceback" not in err
