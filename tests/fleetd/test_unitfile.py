"""Unit-file syntax: parsing, positioned errors, canonical text, hash, Exec quoting."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleetd.unit.unitfile import (
    UnitFile,
    UnitFileError,
    UnitOption,
    content_hash,
    parse_unit_file,
    serialize,
    short_hash,
    split_command_line,
)

REDIS = """\
[Unit]
Description=My redis Frontend
After=docker.service
Requires=docker.service

[Service]
TimeoutStartSec=0
ExecStartPre=-/usr/bin/docker kill redis
ExecStart=/usr/bin/docker run --name hello busybox /bin/sh -c "trap 'exit 0' INT TERM; \
while true; do echo Hello World; sleep 1; done"

[X-Fleet]
Conflicts=redis@*.service
"""
REDIS_EXEC = ('/usr/bin/docker run --name hello busybox /bin/sh -c "trap \'exit 0\' INT TERM; '
              'while true; do echo Hello World; sleep 1; done"')


def opts(*triples: tuple[str, str, str]) -> tuple[UnitOption, ...]:
    return tuple(UnitOption(*t) for t in triples)


GOOD = [
    ("redis-seed", REDIS, opts(
        ("Unit", "Description", "My redis Frontend"), ("Unit", "After", "docker.service"),
        ("Unit", "Requires", "docker.service"), ("Service", "TimeoutStartSec", "0"),
        ("Service", "ExecStartPre", "-/usr/bin/docker kill redis"),
        ("Service", "ExecStart", REDIS_EXEC), ("X-Fleet", "Conflicts", "redis@*.service"))),
    ("empty-file", "", ()),
    ("only-comments", "# a\n; b\n   # c\n\n", ()),
    ("empty-section-dropped", "[Unit]\n[Service]\nA=1\n", opts(("Service", "A", "1"))),
    ("comments-and-blanks", "# top\n[Unit]\n; semi\n  # indented\nA=1\n\n",
     opts(("Unit", "A", "1"))),
    ("whitespace-around-equals", "[Unit]\n  A \t=  b c \t\n", opts(("Unit", "A", "b c"))),
    ("crlf", "[Unit]\r\nA=1\r\nB=2\r\n", opts(("Unit", "A", "1"), ("Unit", "B", "2"))),
    ("no-final-newline", "[Unit]\nA=1", opts(("Unit", "A", "1"))),
    ("bom", "\ufeff[Unit]\nA=1\n", opts(("Unit", "A", "1"))),
    ("empty-value-kept", "[Service]\nEnvironment=\n", opts(("Service", "Environment", ""))),
    ("repeated-key-in-order", "[Service]\nExecStartPre=a\nExecStartPre=b\nExecStartPre=\n",
     opts(("Service", "ExecStartPre", "a"), ("Service", "ExecStartPre", "b"),
          ("Service", "ExecStartPre", ""))),
    ("section-repeated-merged", "[Unit]\nA=1\n[Service]\nB=2\n[Unit]\nC=3\n",
     opts(("Unit", "A", "1"), ("Unit", "C", "3"), ("Service", "B", "2"))),
    ("equals-in-value", "[Service]\nEnvironment=A=1 B=2\n",
     opts(("Service", "Environment", "A=1 B=2"))),
    ("hash-in-value", "[Unit]\nDescription=a # not a comment\n",
     opts(("Unit", "Description", "a # not a comment"))),
    ("quotes-verbatim", "[Service]\nExecStart=/bin/echo \"a b\" 'c'\n",
     opts(("Service", "ExecStart", "/bin/echo \"a b\" 'c'"))),
    ("indented-header", "  [Unit]  \nA=1\n", opts(("Unit", "A", "1"))),
    ("spaces-inside-header", "[X Fleet]\nA=1\n", opts(("X Fleet", "A", "1"))),
    ("key-chars", "[Unit]\nX-Fleet_Key-2=v\n", opts(("Unit", "X-Fleet_Key-2", "v"))),
    ("unicode-value", "[Unit]\nDescription=Grüße ☃\n", opts(("Unit", "Description", "Grüße ☃"))),
    ("continuation", "[Service]\nExecStart=/bin/echo a \\\n   b\n",
     opts(("Service", "ExecStart", "/bin/echo a     b"))),
    ("continuation-skips-comments", "[Service]\nExecStart=a\\\n# skipped\n; skipped\n b\n",
     opts(("Service", "ExecStart", "a  b"))),
    ("continuation-trailing-space", "[Service]\nA=x \\  \ny\n", opts(("Service", "A", "x  y"))),
    ("continuation-at-eof", "[Service]\nA=x\\", opts(("Service", "A", "x"))),
    ("continuation-ended-by-blank", "[Service]\nA=x\\\n\nB=y\n",
     opts(("Service", "A", "x"), ("Service", "B", "y"))),
    ("even-backslashes-not-continued", "[Service]\nA=x\\\\\nB=y\n",
     opts(("Service", "A", "x\\\\"), ("Service", "B", "y"))),
    ("three-backslashes-continue", "[Service]\nA=x\\\\\\\ny\n",
     opts(("Service", "A", "x\\\\ y"))),
    ("continuation-crlf", "[Service]\r\nA=x\\\r\n y\r\n", opts(("Service", "A", "x  y"))),
]


@pytest.mark.parametrize("text, expected", [row[1:] for row in GOOD],
                         ids=[row[0] for row in GOOD])
def test_parse_good(text, expected):
    assert parse_unit_file(text).options == expected


BAD = [
    # id, text, line, col, message pattern
    ("option-before-section", "A=1\n[Unit]\n", 1, 1,
     r"setting A= comes before any \[section\] header; put it under one such as \[Unit\]"),
    ("neither", "[Unit]\nA=1\nthis is prose\n", 3, 1,
     r"line is neither a \[section\] header nor key=value; write Name=Value"),
    ("neither-indented", "[Unit]\n   prose\n", 2, 4, r"neither a \[section\] header"),
    ("header-unclosed", "[Unit\nA=1\n", 1, 5, r"missing its closing '\]'"),
    ("header-lone-bracket", "[\n", 1, 1, r"missing its closing '\]'"),
    ("header-trailing-comment", "[Unit] # main\n", 1, 13, r"comments go on their own line"),
    ("header-empty", "[]\n", 1, 2, r"section name is empty; write one such as \[Unit\]"),
    ("header-nested-brackets", "[[Unit]]\n", 1, 2, r"cannot contain brackets"),
    ("key-with-space", "[Service]\nExec Start=/bin/true\n", 2, 5,
     r"character ' ' is not allowed in setting name 'Exec Start'; keys use letters"),
    ("key-with-dot", "[Service]\n  a.b=1\n", 2, 4, r"character '\.' is not allowed"),
    ("key-missing", "[Service]\n=value\n", 2, 1, r"line starts with '=' and has no setting name"),
    ("key-non-ascii", "[Unit]\nDé=1\n", 2, 2, r"character 'é'"),
    ("nul", "[Unit]\nA=b\x00c\n", 2, 4, r"NUL byte in unit file"),
    ("stray-cr", "[Unit]\nA=b\rc\n", 2, 4, r"carriage return not followed by a line feed"),
    ("double-cr", "[Unit]\nA=b\r\r\n", 2, 4, r"carriage return"),
    ("bell", "[Unit]\n\x07\n", 2, 1, r"control character U\+0007"),
    ("vertical-tab", "[Unit]\nA=\x0b\n", 2, 3, r"control character U\+000B"),
    ("surrogate", "[Unit]\nA=\ud800\n", 2, 3, r"lone surrogate"),
    ("error-on-continued-line", "[Unit\\\nX\n", 2, 1, r"missing its closing '\]'"),
    ("error-after-continuation", "[Unit]\nA=1\\\n b\nprose\n", 4, 1, r"neither"),
    ("nul-inside-continuation", "[Unit]\nA=1\\\n  \x00\n", 3, 3, r"NUL byte"),
    ("key-split-by-continuation", "[Service]\nExec\\\nStart=x\n", 2, 5,
     r"character ' ' is not allowed in setting name 'Exec Start'"),
]


@pytest.mark.parametrize("text, line, col, pattern", [row[1:] for row in BAD],
                         ids=[row[0] for row in BAD])
def test_parse_bad(text, line, col, pattern):
    with pytest.raises(UnitFileError, match=pattern) as info:
        parse_unit_file(text)
    assert (info.value.line, info.value.col) == (line, col)
    assert str(info.value).startswith(f"line {line}, column {col}: ")


def test_non_text_is_refused():
    with pytest.raises(UnitFileError, match=r"must be text, not bytes; decode it as UTF-8"):
        parse_unit_file(b"[Unit]\n")


OPTION_BAD = [
    ("bracket-section", ("Un]it", "A", "1"), r"cannot contain brackets"),
    ("empty-section", ("", "A", "1"), r"section name is empty"),
    ("bad-key", ("Unit", "A B", "1"), r"character ' ' is not allowed"),
    ("empty-key", ("Unit", "", "1"), r"no setting name"),
    ("newline-value", ("Unit", "A", "1\n2"), r"control character U\+000A"),
    ("padded-value", ("Unit", "A", " 1"), r"leading or trailing spaces"),
    ("backslash-end", ("Unit", "A", "x\\"), r"ends with a single '\\'"),
    ("not-a-string", ("Unit", "A", 1), r"value must be a string, not int"),
]


@pytest.mark.parametrize("triple, pattern", [row[1:] for row in OPTION_BAD],
                         ids=[row[0] for row in OPTION_BAD])
def test_option_refuses_what_text_cannot_carry(triple, pattern):
    with pytest.raises(UnitFileError, match=pattern) as info:
        UnitOption(*triple)
    assert info.value.line is None


def test_accessors_and_from_options():
    unit = UnitFile.from_options([
        UnitOption("Service", "ExecStartPre", "a"), UnitOption("Unit", "Description", "d"),
        UnitOption("Service", "ExecStartPre", "b"),
    ])
    assert unit.sections() == ["Service", "Unit"]
    assert unit.get("Service", "ExecStartPre") == ["a", "b"]
    assert unit.get_last("Service", "ExecStartPre") == "b"
    assert unit.get("Service", "Missing") == [] and unit.get_last("Nope", "A") is None
    assert unit.section("Unit") == (UnitOption("Unit", "Description", "d"),)
    assert unit == parse_unit_file("[Service]\nExecStartPre=a\nExecStartPre=b\n"
                                   "[Unit]\nDescription=d\n")
    with pytest.raises(UnitFileError, match=r"holds UnitOption values, not tuple"):
        UnitFile.from_options([("Unit", "A", "1")])


def test_serialize_is_canonical():
    text = "# c\n[Unit]\n  Description = web \n[Service]\nExecStart=a \\\n b\n[Unit]\nAfter=x\n"
    assert serialize(parse_unit_file(text)) == (
        "[Unit]\nDescription=web\nAfter=x\n\n[Service]\nExecStart=a   b\n")
    assert serialize(parse_unit_file(REDIS)) == REDIS.replace("; \\\nwhile", "; while")
    assert serialize(UnitFile()) == ""


SAME_HASH = [
    ("comments", "[Unit]\nA=1\n", "# header\n[Unit]\n; note\nA=1\n# end\n"),
    ("whitespace", "[Unit]\nA=1 2\n", "\n\n  [Unit]\t\n   A =  1 2   \n\n"),
    ("crlf", "[Unit]\nA=1\n", "[Unit]\r\nA=1\r\n"),
    ("continuation-layout", "[Service]\nExecStart=a  b\n", "[Service]\nExecStart=a\\\n b\n"),
    ("split-section", "[Unit]\nA=1\nB=2\n[Service]\nC=3\n",
     "[Unit]\nA=1\n[Service]\nC=3\n[Unit]\nB=2\n"),
    ("empty-section", "[Service]\nC=3\n", "[Unit]\n[Service]\nC=3\n"),
]


@pytest.mark.parametrize("a, b", [row[1:] for row in SAME_HASH],
                         ids=[row[0] for row in SAME_HASH])
def test_hash_ignores_layout(a, b):
    assert content_hash(parse_unit_file(a)) == content_hash(parse_unit_file(b))


DIFFERENT_HASH = [
    ("value", "[Unit]\nA=1\n", "[Unit]\nA=2\n"),
    ("inner-spacing", "[Unit]\nA=1 2\n", "[Unit]\nA=1  2\n"),
    ("key-case", "[Unit]\nA=1\n", "[Unit]\na=1\n"),
    ("option-order", "[Unit]\nA=1\nB=2\n", "[Unit]\nB=2\nA=1\n"),
    ("section-order", "[Unit]\nA=1\n[Service]\nB=2\n", "[Service]\nB=2\n[Unit]\nA=1\n"),
    ("empty-value-added", "[Unit]\nA=1\n", "[Unit]\nA=1\nA=\n"),
    ("quoting", "[Service]\nExecStart=a b\n", "[Service]\nExecStart=\"a b\"\n"),
]


@pytest.mark.parametrize("a, b", [row[1:] for row in DIFFERENT_HASH],
                         ids=[row[0] for row in DIFFERENT_HASH])
def test_hash_follows_content(a, b):
    assert content_hash(parse_unit_file(a)) != content_hash(parse_unit_file(b))


def test_hash_format_and_short_hash():
    digest = content_hash(parse_unit_file(REDIS))
    assert len(digest) == 40 and int(digest, 16) >= 0
    assert short_hash(digest) == digest[:7]
    assert content_hash(UnitFile()) == "da39a3ee5e6b4b0d3255bfef95601890afd80709"  # SHA-1 of ""
    with pytest.raises(ValueError, match=r"not a SHA-1 hex digest"):
        short_hash("xyz")


SPLIT = [
    ("words", "/bin/echo a  b\tc", ["/bin/echo", "a", "b", "c"]),
    ("empty", "", []),
    ("blank", "  \t ", []),
    ("double-quotes", '/bin/sh -c "echo hi; exit 0"', ["/bin/sh", "-c", "echo hi; exit 0"]),
    ("single-quotes", "echo 'a \"b\" c'", ["echo", 'a "b" c']),
    ("single-inside-double", REDIS_EXEC, ["/usr/bin/docker", "run", "--name", "hello", "busybox",
                                          "/bin/sh", "-c", "trap 'exit 0' INT TERM; while true; "
                                          "do echo Hello World; sleep 1; done"]),
    ("mid-word-quote", 'a"b c"d', ["ab cd"]),
    ("empty-quotes", 'echo "" x', ["echo", "", "x"]),
    ("escapes", r"echo \\ \" \' \n \t \s \;", ["echo", "\\", '"', "'", "\n", "\t", " ", ";"]),
    ("escape-in-quotes", r'"a\"b" ' + r"'c\'d'", ['a"b', "c'd"]),
    ("hex", r"echo \x41\x7e", ["echo", "A~"]),
    ("prefix-kept", "-/usr/bin/docker kill redis", ["-/usr/bin/docker", "kill", "redis"]),
]


@pytest.mark.parametrize("value, expected", [row[1:] for row in SPLIT],
                         ids=[row[0] for row in SPLIT])
def test_split_command_line(value, expected):
    assert split_command_line(value) == expected


SPLIT_BAD = [
    ("unterminated-double", 'echo "abc', 6, r"unterminated double quote; close it with a "
                                               r"matching \""),
    ("unterminated-single", "echo 'a b", 6, r"unterminated single quote"),
    ("lone-backslash", "echo \\", 6, r"ends with a lone '\\'"),
    ("unknown-escape", r"echo \q", 6, r"unknown escape '\\q'"),
    ("short-hex", r"echo \x4", 6, r"two hex digits"),
    ("bad-hex", r"echo \xzz", 6, r"two hex digits"),
    ("nul-hex", r"echo \x00", 6, r"NUL"),
]


@pytest.mark.parametrize("value, col, pattern", [row[1:] for row in SPLIT_BAD],
                         ids=[row[0] for row in SPLIT_BAD])
def test_split_command_line_bad(value, col, pattern):
    with pytest.raises(UnitFileError, match=pattern) as info:
        split_command_line(value)
    assert info.value.col == col


# --- properties -------------------------------------------------------------------

ANY_CHAR = st.characters(codec=None, exclude_categories=())
TRICKY = st.sampled_from(["[", "]", "=", "\\", "#", ";", " ", "\t", "\r", "\n", "\r\n", "\x00",
                          "\ufeff", "\x0b", "\ud800", "A", "Unit", "[Unit]", "Key=v", "\\\n"])
ANY_TEXT = st.lists(st.one_of(ANY_CHAR, TRICKY), max_size=200).map("".join)

_LINE = st.one_of(
    st.builds(lambda s: f"[{s}]", st.text(st.characters(exclude_characters="[]\r\n"),
                                          min_size=1, max_size=8)),
    st.builds(lambda k, sp, v: f"{k}{sp}={sp}{v}", st.from_regex(r"[A-Za-z0-9_-]{1,8}",
                                                                fullmatch=True),
              st.sampled_from(["", " ", "\t "]),
              st.text(st.characters(exclude_characters="\r\n"), max_size=12)),
    st.sampled_from(["", "  ", "# comment", " ; note", "\\", "x \\", "[Unit]", "A=1 \\"]),
)
UNIT_TEXT = st.builds(lambda lines, eol: eol.join(lines), st.lists(_LINE, max_size=12),
                      st.sampled_from(["\n", "\r\n"]))


@settings(deadline=None)  # the huge examples are slow by design
@given(st.one_of(ANY_TEXT, UNIT_TEXT))
@example("[Unit]\nA=" + "x" * 2_000_000)
@example("[Unit]\nA=" + "x\\\n" * 50_000)
@example("\\\n" * 50_000)
@example("[" * 100_000)
@example("\x00" * 10_000)
def test_any_text_parses_or_raises_unit_file_error(text):
    try:
        unit = parse_unit_file(text)
    except UnitFileError as err:
        assert err.message
        assert err.line is not None and err.line >= 1
        assert err.col is None or err.col >= 1
        return
    canonical = serialize(unit)
    assert parse_unit_file(canonical) == unit
    assert serialize(parse_unit_file(canonical)) == canonical
    assert len(content_hash(unit)) == 40


def _clean_value(text: str) -> str:
    text = text.strip(" \t")
    return text + "x" if (len(text) - len(text.rstrip("\\"))) % 2 else text


_OK_CHARS = st.characters(codec=None, exclude_categories=("Cc", "Cs"))
OPTIONS = st.lists(st.builds(
    UnitOption,
    st.sampled_from(["Unit", "Service", "X-Fleet", "Install", " odd name "]),
    st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True),
    st.text(_OK_CHARS, max_size=30).map(_clean_value),
), max_size=20)


@settings(deadline=None)  # the huge examples are slow by design
@given(OPTIONS)
def test_parse_of_serialize_is_identity(options):
    unit = UnitFile.from_options(options)
    assert parse_unit_file(serialize(unit)) == unit
    assert content_hash(parse_unit_file(serialize(unit))) == content_hash(unit)


@settings(deadline=None)  # the huge examples are slow by design
@given(st.text(st.one_of(ANY_CHAR, st.sampled_from(["\\", '"', "'", " ", "x"])), max_size=200))
def test_split_command_line_never_crashes(value):
    try:
        words = split_command_line(value)
    except UnitFileError as err:
        assert err.col is not None and 1 <= err.col <= len(value)
        return
    assert all(isinstance(w, str) for w in words)
