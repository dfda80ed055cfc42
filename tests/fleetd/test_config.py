"""fleetd settings: file < environment < flags; every bad value names its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.config import ConfigError, load_config, parse_duration


def test_precedence_flags_over_env_over_file(tmp_path):
    conf = tmp_path / "fleet.conf"
    conf.write_text('# fleet\nmetadata="region=file"\nagent_ttl=10s\npublic-ip=10.0.0.1\n'
                    "etcd_servers=http://127.0.0.1:1111\n")
    env = {"FLEET_METADATA": "region=env", "FLEET_AGENT_TTL": "20s"}
    config = load_config(["--config", str(conf), "--agent-ttl", "7s"], env)
    assert config.agent_ttl == 7.0
    assert dict(config.metadata) == {"region": "env"}
    assert config.public_ip == "10.0.0.1"
    assert config.etcd_servers == ("http://127.0.0.1:1111",)


def test_flag_spellings_with_dashes_or_underscores(tmp_path):
    a = load_config(["--etcd-key-prefix", "/p", "--state-dir", str(tmp_path)], {})
    b = load_config(["--etcd_key_prefix", "/p", "--state_dir", str(tmp_path)], {})
    assert a == b
    assert a.etcd_key_prefix == "/p/"
    assert a.state_dir == Path(tmp_path)


@pytest.mark.parametrize("argv,env,fragment", [
    (["--agent-ttl", "soon"], {}, "--agent-ttl: agent_ttl: 'soon' is not a duration"),
    ([], {"FLEET_ETCD_SERVERS": "localhost:2379"}, "$FLEET_ETCD_SERVERS: etcd_servers"),
    (["--metadata", "region"], {}, "metadata entry 'region' is not key=value"),
    (["--disable-engine", "maybe"], {}, "is not true or false"),
    (["--runner", "docker"], {}, "unknown runner 'docker'"),
    (["--etcd-key-prefix", "fleet"], {}, "must start with /"),
    (["--agent-ttl", "0.5s"], {}, "must be at least 1s"),
], ids=["bad-duration", "url-without-scheme", "metadata-without-equals", "bad-bool",
        "unknown-runner", "relative-prefix", "ttl-too-short"])
def test_bad_values_name_their_source(argv, env, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(argv, env)
    assert fragment in str(info.value)


def test_config_file_errors_have_line_numbers(tmp_path):
    conf = tmp_path / "fleet.conf"
    conf.write_text("metadata=a=b\nbogus_setting=1\n")
    with pytest.raises(ConfigError, match=r"fleet.conf:2: unknown setting 'bogus_setting'"):
        load_config(["--config", str(conf)], {})


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("500ms", 0.5), ("1m", 60), ("5", 5),
                                          ("1.5s", 1.5)], ids=["s", "ms", "m", "bare", "frac"])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_fleetd_exits_2_on_bad_config(capsys):
    from fleetd.cli import main

    assert main(["--agent-ttl", "never"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fleetd: --agent-ttl: agent_ttl:") and "Traceback" not in err


@pytest.mark.parametrize("argv,env,kind", [
    (["--runner", "process"], {}, "process"),
    (["--runner", "auto", "--root-dir", "/tmp"], {}, "process"),   # a local node
    (["--runner", "auto"], {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/bus"},
     "process"),                                                   # no system bus here
    ([], {"FLEET_RUNNER": "systemd"}, "systemd"),
], ids=["process", "local-node", "no-bus", "env"])
def test_runner_choice(argv, env, kind, monkeypatch):
    from fleetd.daemon import runner_kind

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert runner_kind(load_config(argv, env)) == kind


def test_systemd_runner_without_a_bus_is_one_clear_line(tmp_path, capsys, monkeypatch):
    from fleetd.cli import main

    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    code = main(["--runner", "systemd", "--state-dir", str(tmp_path / "state"),
                 "--units-directory", str(tmp_path / "units"),
                 "--etcd-servers", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("fleetd: cannot start: ")
    assert ("cannot reach systemd on the system bus" in err
            or "needs pydbus and PyGObject" in err)
    assert len(err.strip().splitlines()) == 1
