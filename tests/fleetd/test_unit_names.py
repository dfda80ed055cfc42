"""Unit names: systemd's rules, templates and instances, fleetctl's suffix convenience."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleetd.unit.names import (
    INSTANCE_CHARS,
    KNOWN_SUFFIXES,
    UnitName,
    UnitNameError,
    is_template_name,
    is_valid_unit_name,
    normalize_unit_name,
    parse_unit_name,
)

GOOD = [
    # text, prefix, instance, suffix
    ("plain", "web.service", "web", None, "service"),
    ("template", "web@.service", "web", "", "service"),
    ("instance", "web@1.service", "web", "1", "service"),
    ("sidekick", "apache-discovery@1.service", "apache-discovery", "1", "service"),
    ("dot-in-prefix", "foo.bar.socket", "foo.bar", None, "socket"),
    ("dot-in-instance", "web@1.2.service", "web", "1.2", "service"),
    ("at-in-instance", "web@a@b.service", "web", "a@b", "service"),
    ("systemd-escape", "dev-disk-by\\x2dlabel.device", "dev-disk-by\\x2dlabel", None, "device"),
    ("colon-underscore", "a:b_c.timer", "a:b_c", None, "timer"),
    ("leading-dash", "-.slice", "-", None, "slice"),
    ("max-length", "a" * 247 + ".service", "a" * 247, None, "service"),
]


@pytest.mark.parametrize("text, prefix, instance, suffix",
                         [row[1:] for row in GOOD], ids=[row[0] for row in GOOD])
def test_parse_good_names(text, prefix, instance, suffix):
    name = parse_unit_name(text)
    assert (name.prefix, name.instance, name.suffix) == (prefix, instance, suffix)
    assert name.full == str(name) == text
    assert is_valid_unit_name(text)


@pytest.mark.parametrize("suffix", KNOWN_SUFFIXES, ids=KNOWN_SUFFIXES)
def test_every_known_suffix_is_accepted(suffix):
    assert parse_unit_name(f"x.{suffix}").suffix == suffix


BAD = [
    # id, text, message pattern, col
    ("empty", "", r"the name is empty; give one such as web\.service", None),
    ("parent-dir", "../x.service", r"cannot contain '/' \(found at position 3\)", 3),
    ("passwd-traversal", "../../etc/passwd.service", r"cannot contain '/'", 3),
    ("absolute-path", "/etc/systemd/system/web.service", r"not a path", 1),
    ("nul", "web\x00.service", r"a NUL byte at position 4; remove it", 4),
    ("newline", "web\n.service", r"control character U\+000A at position 4", 4),
    ("escape-char", "web\x1b.service", r"control character U\+001B", 4),
    ("del", "web\x7f.service", r"control character U\+007F", 4),
    ("no-suffix", "web", r"no type suffix; add one, e.g. web\.service", None),
    ("trailing-dot", "web.", r"ends with '\.'; finish it with a type such as web\.service", None),
    ("typo-suffix", "web.servce", r"unknown unit type '\.servce'; did you mean \.service\?", 5),
    ("typo-timer", "web.timre", r"did you mean \.timer\?", 5),
    ("unknown-suffix", "web.banana", r"unknown unit type '\.banana'; use one of service, socket",
     5),
    ("space", "web server.service", r"character ' ' at position 4 is not allowed", 4),
    ("non-ascii", "wéb.service", r"character 'é' at position 2", 2),
    ("glob-star", "web*.service", r"character '\*' at position 4", 4),
    ("empty-prefix-template", "@1.service", r"the part before '@' or the type suffix is empty", 1),
    ("only-suffix", ".service", r"the part before '@' or the type suffix is empty", 1),
    ("leading-dot", ".hidden.service", r"must not start with '\.'", 1),
    ("too-long", "a" * 248 + ".service", r"256 characters long; systemd allows at most 255", None),
    ("not-a-string", 42, r"a unit name must be a string, not int", None),
]


@pytest.mark.parametrize("text, pattern, col", [row[1:] for row in BAD],
                         ids=[row[0] for row in BAD])
def test_parse_bad_names(text, pattern, col):
    with pytest.raises(UnitNameError, match=pattern) as info:
        parse_unit_name(text)
    assert info.value.col == col
    assert str(info.value).startswith("invalid unit name ")
    assert not is_valid_unit_name(text)


def test_error_message_clips_huge_names():
    with pytest.raises(UnitNameError) as info:
        parse_unit_name("x" * 100_000)
    assert len(str(info.value)) < 300


PROPERTIES = [
    # id, text, is_template, is_instance, template, stem
    ("plain", "web.service", False, False, None, "web"),
    ("template", "web@.service", True, False, None, "web@"),
    ("instance", "web@1.service", False, True, "web@.service", "web@1"),
    ("socket-instance", "sshd@10.0.0.1:22.socket", False, True, "sshd@.socket", "sshd@10.0.0.1:22"),
]


@pytest.mark.parametrize("text, is_template, is_instance, template, stem",
                         [row[1:] for row in PROPERTIES], ids=[row[0] for row in PROPERTIES])
def test_name_properties(text, is_template, is_instance, template, stem):
    name = parse_unit_name(text)
    assert (name.is_template, name.is_instance, name.template, name.stem) == (
        is_template, is_instance, template, stem)
    assert is_template_name(text) == is_template


INSTANTIATE = [
    ("number", "web@.service", "1", "web@1.service"),
    ("word", "apache@.service", "east", "apache@east.service"),
    ("ip-port", "sshd@.socket", "10.0.0.1:22", "sshd@10.0.0.1:22.socket"),
]


@pytest.mark.parametrize("template, instance, full", [row[1:] for row in INSTANTIATE],
                         ids=[row[0] for row in INSTANTIATE])
def test_instantiate(template, instance, full):
    made = parse_unit_name(template).instantiate(instance)
    assert made == parse_unit_name(full)
    assert made.template == template


INSTANTIATE_BAD = [
    ("not-a-template", "web.service", "1", r"only a template such as web@\.service"),
    ("already-instance", "web@1.service", "2", r"only a template"),
    ("empty-instance", "web@.service", "", r"must be a non-empty string"),
    ("slash-instance", "web@.service", "../x", r"cannot contain '/'"),
    ("space-instance", "web@.service", "a b", r"character ' ' at position 6"),
]


@pytest.mark.parametrize("template, instance, pattern", [row[1:] for row in INSTANTIATE_BAD],
                         ids=[row[0] for row in INSTANTIATE_BAD])
def test_instantiate_bad(template, instance, pattern):
    with pytest.raises(UnitNameError, match=pattern):
        parse_unit_name(template).instantiate(instance)


PARTS_BAD = [
    ("at-in-prefix", ("a@b", None, "service"), r"prefix must not contain '@'"),
    ("unknown-suffix", ("web", None, "banana"), r"unknown unit type"),
    ("slash-prefix", ("../web", None, "service"), r"cannot contain '/'"),
    ("empty-prefix", ("", "1", "service"), r"is empty"),
]


@pytest.mark.parametrize("parts, pattern", [row[1:] for row in PARTS_BAD],
                         ids=[row[0] for row in PARTS_BAD])
def test_constructing_from_bad_parts_is_refused(parts, pattern):
    with pytest.raises(UnitNameError, match=pattern):
        UnitName(*parts)


NORMALIZE = [
    ("bare", "hello", "service", "hello.service"),
    ("instance", "apache@1", "service", "apache@1.service"),
    ("template", "apache@", "service", "apache@.service"),
    ("has-suffix", "db.socket", "service", "db.socket"),
    ("has-service", "web@.service", "service", "web@.service"),
    ("dot-not-a-suffix", "v1.2", "service", "v1.2.service"),
    ("other-default", "backup", "timer", "backup.timer"),
]


@pytest.mark.parametrize("text, default, expected", [row[1:] for row in NORMALIZE],
                         ids=[row[0] for row in NORMALIZE])
def test_normalize(text, default, expected):
    assert normalize_unit_name(text, default) == expected


NORMALIZE_BAD = [
    ("empty", "", "service", r"is empty"),
    ("path", "../x", "service", r"cannot contain '/'"),
    ("bad-char", "a b", "service", r"character ' '"),
    ("bad-default", "hello", "banana", r"default suffix 'banana' is not a unit type"),
]


@pytest.mark.parametrize("text, default, pattern", [row[1:] for row in NORMALIZE_BAD],
                         ids=[row[0] for row in NORMALIZE_BAD])
def test_normalize_bad(text, default, pattern):
    with pytest.raises(UnitNameError, match=pattern):
        normalize_unit_name(text, default)


NAME_CHARS = st.sampled_from(sorted(INSTANCE_CHARS))
UNIT_LIKE = st.builds(lambda stem, suffix: f"{stem}.{suffix}",
                      st.text(NAME_CHARS, max_size=30), st.sampled_from(KNOWN_SUFFIXES))
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)


@settings(deadline=None)  # the huge examples are slow by design
@given(st.one_of(ANY_TEXT, UNIT_LIKE, st.text(st.sampled_from("a@./\\\x00\r\n .service"))))
@example("a" * 1_000_000 + ".service")
@example("\x00" * 10_000)
@example("@" * 300)
def test_any_text_gives_a_name_or_a_unit_name_error(text):
    try:
        name = parse_unit_name(text)
    except UnitNameError as err:
        assert err.message and not is_valid_unit_name(text)
        return
    assert name.full == text
    assert is_valid_unit_name(text)
    assert is_template_name(text) == name.is_template
    assert parse_unit_name(name.full) == name


@settings(deadline=None)  # the huge examples are slow by design
@given(st.one_of(ANY_TEXT, st.text(NAME_CHARS, max_size=40)))
def test_normalize_gives_a_valid_name_or_a_unit_name_error(text):
    try:
        full = normalize_unit_name(text)
    except UnitNameError:
        return
    assert is_valid_unit_name(full)
    assert full.rpartition(".")[2] in KNOWN_SUFFIXES
