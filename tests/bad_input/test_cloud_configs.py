"""Malformed cloud-configs through `provision validate --user-data`: exit 2, one positioned
line per problem, no traceback; the validator itself never raises on any text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provision.cli.root import main
from provision.userdata import validate_user_data
from tests.bad_input.support import FUZZ, Outcome, assert_clear_refusal, bounded, tally

H = "#cloud-config\n"

CASES = [
    ("empty", "", "the file is empty"),
    ("no-header", "coreos: {}\n", 'must be "#cloud-config" or begin with "#!"'),
    ("shebang", "#!/bin/sh\nrm -rf /\n", "run it as a script"),
    ("bom-header", "\ufeff#cloud-config\n", "byte-order mark"),
    ("header-typo", "#cloud-confg\n", 'must be "#cloud-config" or begin with "#!"'),
    ("malformed-yaml", H + "coreos: [\n", "malformed YAML"),
    ("tab-indent", H + "coreos:\n\tetcd2: {}\n", "malformed YAML"),
    ("top-level-list", H + "- a\n- b\n", "must be a mapping"),
    ("top-level-scalar", H + "hello\n", "must be a mapping"),
    ("deep-nesting", H + "x: " + "[" * 500 + "]" * 500 + "\n", "nested deeper"),
    ("unclosed-deep", H + "x: " + "{a: " * 50_000 + "\n", "nested deeper"),
    ("billion-laughs", H + "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 10) + "]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)), "alias bomb"),
    ("recursive-alias", H + "a: &a [*a]\n", "nested deeper"),
    ("self-merge", H + "a: &a {<<: *a}\n", "merges a mapping into itself"),
    ("duplicate-key", H + "hostname: a\nhostname: b\n", "duplicate key"),
    ("nul", H + "hostname: a\x00b\n", "U+0000"),
    ("write-files-usr-prefix", H + "write_files: [{path: /usrlocal/x}]\n",
     "read-only filesystem"),
    ("write-files-not-base64", H + "write_files: [{path: /etc/x, encoding: b64, content: a b}]\n",
     'cannot be decoded as "b64"'),
    ("write-files-not-gzip", H + "write_files: [{path: /etc/x, encoding: gzip+base64, "
     "content: aGVsbG8=}]\n", "not gzip data"),
    ("write-files-no-content", H + "write_files: [{path: /etc/x, encoding: base64}]\n",
     "has no content"),
    ("invalid-window", H + "coreos: {locksmith: {window_start: '25:00'}}\n",
     "invalid value 25:00"),
    ("invalid-unit-command", H + "coreos: {units: [{name: a.service, command: begin}]}\n",
     "invalid value begin"),
    ("huge", H + "hostname: " + "x" * (9 * 1024 * 1024) + "\n", "too large"),
]


def _run(capsys, *argv: str) -> Outcome:
    code = main(list(argv))
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


@pytest.mark.parametrize("text,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_user_data(capsys, tmp_path, text, fragment):
    path = tmp_path / "user-data-1"
    path.write_text(text, encoding="utf-8")
    assert_clear_refusal(_run(capsys, "validate", "--user-data", str(path)), str(path), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user-data-1"]


def test_unreadable_user_data(capsys, tmp_path):
    bad = tmp_path / "latin1"
    bad.write_bytes(b"#cloud-config\nhostname: \xe9\n")
    for path, fragment in [(bad, "cannot read"), (tmp_path / "missing", "cannot read"),
                           (tmp_path, "cannot read")]:
        assert_clear_refusal(_run(capsys, "validate", "--user-data", str(path)), str(path),
                             fragment)


YAMLISH = st.text(st.sampled_from(list("#cloud-config:\n -[]{}&*!|>'\"\\\t,?%@`~\x00\ufeffab0")),
                  max_size=200)


@FUZZ
@given(st.one_of(YAMLISH, YAMLISH.map(lambda t: H + t), st.text(max_size=300).map(lambda t: H + t)))
def test_validator_never_raises(text):
    tally()
    with bounded(5):
        problems = validate_user_data(text, "ud")
    for problem in problems:
        assert str(problem).startswith("ud"), problem
        assert "\n" not in str(problem), "one problem, one line"
        assert problem.severity in ("error", "warning", "info")


# -- the machine applier (`provision cloudinit`) reads the same files --------------------------

@pytest.mark.parametrize("text,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_user_data_refused_by_the_applier(capsys, tmp_path, text, fragment):
    path = tmp_path / "user-data"
    path.write_text(text, encoding="utf-8")
    outcome = _run(capsys, "cloudinit", "--validate", "--from-file", str(path),
                   "--environment-file", str(tmp_path / "none"))
    assert_clear_refusal(outcome, str(path), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user-data"]


MACHINE_CASES = [
    ("unknown-command", H + "coreos:\n  units: [{name: a.service, command: launch}]\n",
     'invalid value launch for "command"'),
    ("unit-path-escape", H + "coreos:\n  units: [{name: ../../etc/passwd}]\n",
     "invalid unit name"),
    ("drop-in-escape", H + "coreos:\n  units: [{name: a.service, drop-ins: "
     "[{name: ../../x.conf}]}]\n", "must be a file name"),
    ("path-escape", H + "write_files: [{path: /etc/../../root/x}]\n", 'contains ".."'),
    ("bad-gzip", H + "write_files: [{path: /etc/x, encoding: gz+b64, content: aGVsbG8=}]\n",
     "it is not gzip data"),
    ("hostname-shell", H + "hostname: 'a;reboot'\n", "not a valid host name"),
    ("user-shell", H + "users: [{name: 'a;b'}]\n", "user name"),
    ("owner-shell", H + "write_files: [{path: /etc/x, owner: 'a b:c'}]\n", "owner"),
]


@pytest.mark.parametrize("text,fragment", [c[1:] for c in MACHINE_CASES],
                         ids=[c[0] for c in MACHINE_CASES])
def test_what_a_machine_cannot_apply_is_refused(capsys, tmp_path, text, fragment):
    tally()
    path = tmp_path / "user-data"
    path.write_text(text, encoding="utf-8")
    outcome = _run(capsys, "cloudinit", "--validate", "--from-file", str(path),
                   "--environment-file", str(tmp_path / "none"))
    assert_clear_refusal(outcome, str(path), fragment)


SECTIONS = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=12),
              st.sampled_from(["start", "../x", "/etc/a", "a.service", "0644", "b64", "core",
                               "$private_ipv4", "\\$public_ipv4", "x.conf", "root:root"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(
            ["hostname", "users", "write_files", "coreos", "units", "name", "command",
             "content", "drop-ins", "path", "owner", "permissions", "encoding", "mask",
             "enable", "runtime", "etcd2", "fleet", "flannel", "ssh_authorized_keys",
             "manage_etc_hosts", "groups", "passwd", "homedir"]), inner, max_size=4)),
    max_leaves=12)


@FUZZ
@given(SECTIONS)
def test_the_applier_model_never_raises_but_a_user_error(data):
    import yaml

    from provision.errors import UserError
    from provision.machine.config import parse_machine_config
    from provision.machine.model import Facts

    tally()
    text = H + yaml.safe_dump(data if isinstance(data, dict) else {"hostname": data})
    with bounded(5):
        try:
            parse_machine_config(text, "ud", {"private_ipv4": "10.0.0.1",
                                              "public_ipv4": "10.0.0.1"}, Facts())
        except UserError as err:
            for problem in err.problems:
                assert str(problem).startswith("ud") and "\n" not in str(problem), problem
