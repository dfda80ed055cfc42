"""Every duration and number flag of `provision`, `fleetctl`, `fleetd` and `fleetd announce`
refuses nan, inf, negative values and — where it means nothing — zero: exit 2 and one line
naming the flag, before anything is read, started or written. (`--timeout nan` used to
never time out; `-5` and `0` were accepted silently.)"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys

import pytest

from fleetd.cli import main as fleetd_main
from fleetd.fleetctl.main import run as fleetctl_run
from provision.cli.root import main as provision_main
from tests.bad_input.support import Outcome
from tests.conftest import REPO

NOT_FINITE = ["nan", "NaN", "inf", "-inf", "1e999"]
NEGATIVE = ["-5", "-0.5s"]
NOT_A_NUMBER = ["soon", "", "5 s s", "1_0"]
ZERO = ["0", "0s", "-0"]
POSITIVE_DURATION = NOT_FINITE + NEGATIVE + NOT_A_NUMBER + ZERO
NON_NEGATIVE_DURATION = NOT_FINITE + NEGATIVE + NOT_A_NUMBER
NON_NEGATIVE_INT = ["-1", "nan", "inf", "1.5", "", "ten"]
POSITIVE_INT = [*NON_NEGATIVE_INT, "0"]


def _in_process(main, argv: list[str]) -> Outcome:  # a console entry point
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as done:  # argparse
            code = done.code
    return Outcome(code, out.getvalue(), err.getvalue())


def provision(*argv: str) -> Outcome:
    return _in_process(provision_main, list(argv))


def fleetd(*argv: str) -> Outcome:
    return _in_process(fleetd_main, list(argv))


def fleetctl(*argv: str, env: dict | None = None) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    code = fleetctl_run(["--endpoint", "unix:///nonexistent/fleet.sock", *argv],
                        env=env or {}, stdout=out, stderr=err)
    return Outcome(code, out.getvalue(), err.getvalue())


# (id, runner, argv with {} for the value, the flag named, bad values)
FLAGS = [
    ("provision-apply-timeout", provision, ["apply", "c.yaml", "--timeout", "{}"],
     "--timeout", POSITIVE_DURATION),
    ("provision-up-timeout", provision, ["up", "c.yaml", "--timeout", "{}"],
     "--timeout", POSITIVE_DURATION),
    ("provision-down-timeout", provision, ["down", "c", "--timeout", "{}"],
     "--timeout", POSITIVE_DURATION),
    ("provision-node-timeout", provision, ["node", "stop", "core-01", "--timeout", "{}"],
     "--timeout", POSITIVE_DURATION),
    ("fleetctl-request-timeout", fleetctl, ["--request-timeout", "{}", "list-units"],
     "--request-timeout", POSITIVE_DURATION),
    ("fleetctl-block-timeout", fleetctl, ["start", "--block-timeout", "{}", "a.service"],
     "--block-timeout", NON_NEGATIVE_DURATION),
    ("fleetctl-block-attempts", fleetctl, ["stop", "--block-attempts", "{}", "a.service"],
     "--block-attempts", NON_NEGATIVE_INT),
    ("fleetctl-journal-lines", fleetctl, ["journal", "--lines", "{}", "a.service"],
     "--lines", NON_NEGATIVE_INT),
    ("fleetd-agent-ttl", fleetd, ["--agent-ttl", "{}"], "--agent-ttl", POSITIVE_DURATION),
    ("fleetd-etcd-request-timeout", fleetd, ["--etcd-request-timeout", "{}"],
     "--etcd-request-timeout", POSITIVE_DURATION),
    ("fleetd-engine-reconcile-interval", fleetd, ["--engine-reconcile-interval", "{}"],
     "--engine-reconcile-interval", POSITIVE_DURATION),
    ("fleetd-verbosity", fleetd, ["--verbosity", "{}"], "--verbosity", NON_NEGATIVE_INT),
    ("announce-ttl", fleetd, ["announce", "--unit", "a.service", "--key", "/a", "--port", "80",
                              "--etcd-servers", "http://127.0.0.1:9", "--machine", "m",
                              "--ttl", "{}"], "--ttl", POSITIVE_INT),
    ("announce-interval", fleetd, ["announce", "--unit", "a.service", "--key", "/a", "--port",
                                   "80", "--etcd-servers", "http://127.0.0.1:9", "--machine",
                                   "m", "--interval", "{}"], "--interval", POSITIVE_DURATION),
    ("announce-port", fleetd, ["announce", "--unit", "a.service", "--key", "/a",
                               "--etcd-servers", "http://127.0.0.1:9", "--machine", "m",
                               "--port", "{}"], "--port", [*POSITIVE_INT, "65536"]),
]

CASES = [pytest.param(run, [a.replace("{}", value) for a in argv], flag,
                      id=f"{name}={value or 'empty'}")
         for name, run, argv, flag, values in FLAGS for value in values]


@pytest.mark.parametrize("run,argv,flag", CASES)
def test_a_bad_number_is_refused_in_one_line_naming_the_flag(run, argv, flag):
    result = run(*argv)
    assert result.code == 2, result
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    if run is fleetctl:  # fleetctl's own convention: the error, then where help is
        assert len(lines) == 2 and lines[1].startswith("Run 'fleetctl"), lines
    else:
        assert len(lines) == 1, lines
    assert flag in lines[0], lines[0]
    assert result.out == ""


@pytest.mark.parametrize("value", [v for v in POSITIVE_DURATION if v])  # empty: unset
def test_fleetctl_request_timeout_from_the_environment_is_checked_too(value):
    result = fleetctl("list-units", env={"FLEETCTL_REQUEST_TIMEOUT": value})
    assert result.code == 2, result
    assert "FLEETCTL_REQUEST_TIMEOUT" in result.err


@pytest.mark.parametrize("value", ["-5", "nan", "0"])
def test_fleetd_settings_from_a_file_and_the_environment_are_checked_too(tmp_path, value,
                                                                       monkeypatch):
    conf = tmp_path / "fleet.conf"
    conf.write_text(f"agent_ttl={value}\n")
    from_file = fleetd("--config", str(conf))
    assert from_file.code == 2 and f"{conf}:1: agent_ttl:" in from_file.err, from_file
    monkeypatch.setenv("FLEET_ENGINE_RECONCILE_INTERVAL", value)
    from_env = fleetd()
    assert from_env.code == 2, from_env
    assert "$FLEET_ENGINE_RECONCILE_INTERVAL: engine_reconcile_interval:" in from_env.err


@pytest.mark.parametrize("text,seconds", [
    ("30", 30.0), ("2.5", 2.5), ("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0),
    ("1e3", 1000.0), (" 5s ", 5.0)])
def test_good_durations_are_accepted(text, seconds):
    from fleetd.argtypes import positive_duration

    assert positive_duration(text) == seconds


def test_zero_block_timeout_means_wait_forever_and_is_accepted():
    # 0 has a documented meaning there; the command then fails only on the absent endpoint.
    result = fleetctl("start", "--block-timeout", "0", "a.service")
    assert result.code == 1 and "--block-timeout" not in result.err, result


def test_the_console_scripts_exit_2_with_one_line():
    exe = shutil.which("provision")
    command = [exe] if exe else [sys.executable, "-m", "provision.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv, flag in ((command + ["apply", "c.yaml", "--timeout", "nan"], "--timeout"),
                       ([sys.executable, "-m", "fleetd.cli", "--agent-ttl", "-5"],
                        "--agent-ttl")):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 2, result
        assert len(result.stderr.strip().splitlines()) == 1 and flag in result.stderr
