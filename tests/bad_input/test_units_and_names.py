"""Unit files and unit names from users: the parsers refuse with their own error type (never
another exception), fleetctl exits 2 with a clear message, and a declared unit file in a
cluster definition is refused by `provision validate` with a line pointing into it."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetd.fleetctl.main import run as fleetctl
from fleetd.unit.names import UnitNameError, parse_unit_name
from fleetd.unit.unitfile import UnitFileError, parse_unit_file, split_command_line
from fleetd.unit.xfleet import FleetOptionsError, parse_fleet_options
from provision.cli.root import main
from tests.bad_input.support import FUZZ, Outcome, assert_clear_refusal, bounded, tally

BAD_NAMES = {
    "traversal": "../../etc/passwd.service",
    "absolute": "/etc/passwd.service",
    "dot-dot-only": "...service",
    "nul": "web\x00.service",
    "nul-only": "\x00",
    "empty": "",
    "huge": "a" * 100_000 + ".service",
    "unicode": "wéb.service",
    "rtl-override": "web\u202e.service",
    "fullwidth-slash": "..\uff0fetc.service",
    "newline": "web\n.service",
    "space": "a b.service",
    "percent-encoded": "..%2Fetc.service",
    "backslash-traversal": "..\\..\\etc\\passwd.service",  # allowed chars; must not be a path
    "glob": "web*.service",
    "no-suffix": "passwd",
}


@pytest.mark.parametrize("text", BAD_NAMES.values(), ids=BAD_NAMES)
def test_unit_name_parser_refuses_or_keeps_it_a_plain_name(text):
    try:
        name = parse_unit_name(text)
    except UnitNameError as err:
        assert len(str(err)) < 400, "a huge name must not become a huge message"
        return
    assert "/" not in name.full and "\x00" not in name.full and not name.full.startswith(".")


FLEETCTL_NAMES = {k: v for k, v in BAD_NAMES.items()
                  if k not in ("traversal", "absolute", "backslash-traversal", "no-suffix",
                               "glob", "dot-dot-only")}


@pytest.mark.parametrize("command", ["start", "destroy", "status", "cat", "journal"])
@pytest.mark.parametrize("text", FLEETCTL_NAMES.values(), ids=FLEETCTL_NAMES)
def test_fleetctl_refuses_bad_names_before_any_request(tmp_path, command, text):
    out, err = io.StringIO(), io.StringIO()
    # An endpoint nobody listens on: a refusal must come before any request is tried.
    code = fleetctl(["--endpoint", f"unix://{tmp_path}/none.sock", command, text],
                    env={}, stdout=out, stderr=err)
    assert code == 2, err.getvalue()
    first = err.getvalue().splitlines()[0]
    assert first.startswith("fleetctl: ") and "is not a unit name" in first
    assert "Traceback" not in err.getvalue() and "cannot reach" not in err.getvalue()
    assert len(first) < 400


BAD_UNIT_FILES = {
    "unclosed-section": ("[Service\nExecStart=/bin/true\n", 1, "closing ']'"),
    "no-section": ("ExecStart=/bin/true\n", 1, "section"),
    "nul": ("[Service]\nExecStart=/bin/tr\x00ue\n", 2, "NUL"),
    "bare-cr": ("[Service]\nExecStart=a\rb\n", 2, "carriage return"),
    "no-equals": ("[Service]\nExecStart\n", 2, "key=value"),
    "bad-key": ("[Service]\nExec$tart=x\n", 2, "Exec$tart"),
    "empty-section": ("[]\nA=1\n", 1, "section"),
    "continuation-at-eof": ("[Service]\nExecStart=/bin/true \\", None, None),
    "xfleet-unknown": ("[X-Fleet]\nMachineIDs=abc\n", None, "MachineID"),
    "xfleet-bool": ("[X-Fleet]\nGlobal=perhaps\n", None, "Global=perhaps"),
    "xfleet-global-and-machineof": ("[X-Fleet]\nGlobal=true\nMachineOf=b.service\n", None,
                                    "Global"),
    "xfleet-metadata-empty": ("[X-Fleet]\nMachineMetadata==\n", None, "MachineMetadata"),
    "xfleet-conflicts-path": ("[X-Fleet]\nConflicts=/etc/passwd\n", None, "Conflicts"),
    "huge": ("[Service]\nExecStart=" + "x" * (1024 * 1024 + 10) + "\n", None, "1 MiB"),
    "deep-continuations": ("[Service]\nExecStart=a \\\n" * 1 + "b \\\n" * 50_000 + "c\n",
                           None, None),
}


@pytest.mark.parametrize("text,line,fragment", BAD_UNIT_FILES.values(), ids=BAD_UNIT_FILES)
def test_bad_unit_file_in_a_cluster_definition(capsys, tmp_path, text, line, fragment):
    (tmp_path / "units").mkdir()
    unit = tmp_path / "units" / "web.service"
    unit.write_text(text, encoding="utf-8")
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("name: demo\nnodes: {count: 1}\nunits:\n  - file: units/web.service\n")
    code = main(["validate", str(cluster)])
    result = Outcome(code, *capsys.readouterr())
    if fragment is None and code == 0:  # systemd accepts it; then it must be a valid unit
        parse_unit_file(text)
        return
    # Problems point into the unit file, or at the `units:` entry of the cluster file.
    file = str(unit) if result.err.startswith(str(unit)) else str(cluster)
    assert_clear_refusal(result, file, fragment)
    if line is not None and file == str(unit):
        assert result.err.startswith(f"{unit}:{line}:"), result.err
    out = tmp_path / "out"
    assert main(["render", str(cluster), "-o", str(out)]) == 2
    capsys.readouterr()
    assert not out.exists()


# -- hypothesis: the parsers answer with their own error, never anything else ----------------
UNIT_ALPHABET = list("[]=\\#;\n\r\t \"'%$@.-_:aZ09") + ["\x00", "\x1b", "\x7f", "é", "\ufeff",
                                                       "\ud800", "X-Fleet", "Service",
                                                       "ExecStart", "Global", "MachineOf"]


@FUZZ
@given(st.lists(st.sampled_from(UNIT_ALPHABET), max_size=80).map("".join) | st.text(max_size=200))
def test_unit_file_parser_only_raises_unit_file_error(text):
    tally()
    with bounded(5):
        try:
            unit = parse_unit_file(text)
        except UnitFileError as err:
            assert "\n" not in str(err)
            return
        try:
            parse_fleet_options(unit, "x.service")
        except FleetOptionsError:
            pass
        for option in unit.options:
            try:
                split_command_line(option.value)
            except UnitFileError:
                pass


NAME_ALPHABET = list("./\\@%:_-aZ09 \x00\n\x7f") + ["service", "é", "..", "\u202e", "\ud800"]


@FUZZ
@given(st.lists(st.sampled_from(NAME_ALPHABET), max_size=40).map("".join)
       | st.text(max_size=300) | st.integers() | st.none() | st.binary(max_size=20))
def test_unit_name_parser_only_raises_unit_name_error(text):
    tally()
    with bounded(5):
        try:
            name = parse_unit_name(text)
        except UnitNameError as err:
            assert len(str(err)) < 600
            return
    assert isinstance(text, str) and "/" not in text and "\x00" not in text
    assert name.full == text and len(text) <= 255 and text.isascii()
