"""The installed `provision` console script: exit codes and clean one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import CLUSTERS, REPO


def provision(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    exe = shutil.which("provision")
    command = [exe] if exe else [sys.executable, "-m", "provision.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=60,
                          cwd=cwd or REPO, env=env, stdin=subprocess.DEVNULL)


def test_render_default_output_dir(tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text((CLUSTERS / "vagrant.yaml").read_text())
    result = provision("render", str(cluster), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "vagrant" / "user-data-3").exists()
    assert "rendered vagrant: 3 nodes" in result.stdout


@pytest.mark.parametrize("argv,fragment", [
    ([], "required"),
    (["render"], "required"),
    (["frobnicate"], "invalid choice"),
    (["render", "x.yaml", "--bogus"], "unrecognized arguments"),
], ids=["no-command", "render-without-file", "unknown-command", "unknown-flag"])
def test_usage_errors_exit_2(argv, fragment):
    result = provision(*argv)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_user_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: demo\nnodes:\n  count: [\n")
    result = provision("render", str(bad), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"{bad}:")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_validate_user_data_reports_positions(tmp_path):
    bad = tmp_path / "user-data"
    bad.write_text("#cloud-config\ncoreos:\n  etcd2:\n    proxy: maybe\n"
                   "write_files:\n  - path: /usr/share/x\n")
    result = provision("validate", "--user-data", str(bad))
    assert result.returncode == 2
    assert f"{bad}:6:" in result.stderr and "/usr" in result.stderr
    assert f"{bad}:4:" in result.stderr


def test_validate_help_states_the_exit_status_rule():
    result = provision("validate", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--strict" in text
    assert "0 no errors (warnings and notes are printed, and pass)" in text
    assert "2 an error in any file (with --strict: any problem at all)" in text
    assert "coreos-cloudinit -validate exits 1 for any finding" in text


def test_validate_user_data_warnings_pass_unless_strict(tmp_path):
    ud = tmp_path / "user-data"
    ud.write_text("#cloud-config\ncoreos:\n  etcd2:\n    auto-compaction-retention: 1\n")
    result = provision("validate", "--user-data", str(ud))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f'{ud}:4:5: warning: unrecognized key "auto-compaction-retention"'
                             "\n")
    assert result.stdout == f"{ud}: valid cloud-config (1 warning)\n"
    strict = provision("validate", "--strict", "--user-data", str(ud))
    assert strict.returncode == 2
    assert strict.stdout == ""


def test_an_unreachable_etcd_no_command_foresaw_is_still_one_line(monkeypatch, capsys):
    from fleetd.registry.etcd import RegistryUnavailable
    from provision.cli import apply as apply_cli
    from provision.cli.root import main

    def unforeseen(args) -> int:
        raise RegistryUnavailable("etcd unreachable: UNAVAILABLE: connection refused")

    monkeypatch.setattr(apply_cli, "cmd_plan", unforeseen)
    assert main(["plan", "c.yaml"]) == 1
    err = capsys.readouterr().err
    assert err == ("provision: etcd unreachable: UNAVAILABLE: connection refused; is the "
                   "cluster up? (`provision status`)\n")
