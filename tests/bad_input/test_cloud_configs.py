"""Malformed cloud-configs through `provision validate --user-data`: exit 2, one positioned
line per problem, no traceback; the validator itself never raises on any text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provision.cli import main
from provision.cloudconfig import validate_user_data
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
