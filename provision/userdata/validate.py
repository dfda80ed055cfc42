"""Validate CoreOS user-data as `coreos-cloudinit -validate` v1.13.0 does, a little stricter.

coreos-cloudinit reads the document twice: once with YAML's own types and
once into its config structs, whose string fields receive a scalar's text as
written (so `off`, `0644` and `1.10` stay strings). This module reads values
the same way, from the scalar text `yamlmarks` keeps, and runs the same rules
at the same levels:

- error: YAML that does not parse, a missing `#cloud-config` header, a value
  that does not match its field's `valid` pattern, `write_files` content that
  does not decode with its `encoding`, a file under /usr (its rule: the
  file's directory starts with `/usr`);
- warning: a key it does not know, a value of the wrong type, a deprecated
  key, an etcd v0.4 discovery value that is not a URL;
- info: `write_files` under `coreos`.

Stricter than coreos-cloudinit, and said so in the message: an empty file or
a script where a cloud-config is expected, duplicate keys (also `a-b` next to
`a_b`), a unit, drop-in or file without its name/path are errors; values that
pass the validator but fail at boot (`initial_cluster_state`, `manage_etc_hosts`),
a relative `write_files` path and gzip data that breaks after its header are
warnings. Every problem carries the line and column to edit.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator
from typing import Any

from provision.errors import Problem, UserError, did_you_mean
from provision.userdata.rules import (
    BOOL,
    CLOUD_CONFIG,
    ENCODINGS,
    FLOAT,
    INT,
    LIST,
    MAPPING,
    STRING,
    Field,
    canonical,
)
from provision.userdata.write_files import (
    UndecodableContent,
    decode_content,
    gzip_body_problem,
    on_read_only_usr,
)
from provision.yamlmarks import MarkedDocument, Path_, load_yaml, value_kind

HEADER = "#cloud-config"
NULL = "null"
UINT = "uint"  # Go's YAML reads integers past int64 as uint64, a kind no field takes

_SURROGATE = re.compile("[\ud800-\udfff]")
_ALTERNATIVES = re.compile(r"\^\(([^()]*)\)\$")
_LITERAL = re.compile(r"\^([\w.-]+)\$")
# Go's unicode.IsSpace (coreos-cloudinit trims these after the header).
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007" \
            "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
# How Go's YAML (go-yaml v1, in coreos-cloudinit) resolves plain scalars.
_GO_BOOLS = frozenset("y Y yes Yes YES true True TRUE on On ON "
                      "n N no No NO false False FALSE off Off OFF".split())
_GO_NULLS = frozenset(["", "~", "null", "Null", "NULL"])
_GO_FLOAT_WORDS = frozenset(f"{sign}.{word}" for sign in ("", "+", "-")
                            for word in ("inf", "Inf", "INF", "nan", "NaN", "NAN"))
_GO_INT = re.compile(r"[-+]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_GO_BINARY_INT = re.compile(r"-?0b[01]+")
_TAG_KINDS = {"str": STRING, "binary": STRING, "timestamp": STRING, "int": INT,
              "float": FLOAT, "bool": BOOL, "null": NULL}
# What each kind of field accepts (coreos-cloudinit's isCompatible).
_ACCEPTS = {STRING: {STRING, INT, FLOAT, BOOL}, INT: {INT}, FLOAT: {FLOAT, INT}, BOOL: {BOOL},
            LIST: {LIST}, MAPPING: {MAPPING}}
_KIND_WORDS = {STRING: "a string", INT: "an integer", FLOAT: "a number", BOOL: "a boolean",
               MAPPING: "a mapping", LIST: "a list", UINT: "an integer too large for it"}
_VALID_HELP = {
    "window_start": 'want a time like "04:00" or "Thu 04:00" (0-23 hours, 0-59 minutes)',
    "window_length": 'want a duration like "1h" or "30m"',
    "permissions": 'want an octal mode like "0644"',
}


def validate_user_data(text: str, file: str) -> list[Problem]:
    """All problems in one user-data file, sorted by position; never raises."""
    problems = _check_header(text, file)
    if text and not text.startswith("#!") and not _is_ignition(text):
        problems.extend(_check_body(text, file))
    return sorted(problems, key=_order)


def _order(problem: Problem) -> tuple:
    return (problem.line or 0, problem.col or 0, problem.severity, problem.message)


def is_cloud_config(text: str) -> bool:
    """coreos-cloudinit's test: the first line, less trailing white space, is the header."""
    return text.split("\n", 1)[0].rstrip(_GO_SPACE) == HEADER


def _is_ignition(text: str) -> bool:
    """coreos-cloudinit's test for an Ignition config: JSON with an ignition version."""
    try:
        data = json.loads(text)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    ignition = data.get("ignition")
    return "ignitionVersion" in data or (isinstance(ignition, dict) and "version" in ignition)


def _check_header(text: str, file: str) -> list[Problem]:
    if is_cloud_config(text):
        return []
    first = text.split("\n", 1)[0].removesuffix("\r")
    if not text:
        message = ("the file is empty: coreos-cloudinit would do nothing with it; "
                   f'a cloud-config starts with a "{HEADER}" line')
    elif text.startswith("#!"):
        message = (f'starts with "#!", so coreos-cloudinit would run it as a script, not read '
                   f'it as a cloud-config; make the first line "{HEADER}"')
    elif _is_ignition(text):
        message = ("an Ignition config, not a cloud-config: coreos-cloudinit leaves it to "
                   f'Ignition; a cloud-config starts with a "{HEADER}" line')
    elif first.lstrip("\ufeff").rstrip(_GO_SPACE) == HEADER:
        message = (f'must be "{HEADER}" or begin with "#!": remove the byte-order mark '
                   "before it on the first line")
    else:
        message = (f'must be "{HEADER}" or begin with "#!" (the first line is '
                   f'"{_clip(first)}"); without the header coreos-cloudinit ignores the file')
    return [Problem(file, 1, 1, message, "error")]


def _clip(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _check_body(text: str, file: str) -> list[Problem]:
    bad = _SURROGATE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        col = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        return [Problem(file, line, col,
                        f"character U+{ord(bad.group()):04X} is a lone surrogate, not valid "
                        "Unicode; remove it", "error")]
    try:
        doc = load_yaml(text, file, keep_scalars=True)
    except UserError as err:
        return list(err.problems)
    if doc.data is None:
        return []
    checker = _Checker(doc)
    if not isinstance(doc.data, dict):
        checker.report((), f"the top level must be a mapping (keys like coreos: and "
                           f"write_files:), not {value_kind(doc.data)}",
                       key=False, severity="error")
        return checker.problems
    checker.mapping((), doc.data, CLOUD_CONFIG)
    checker.write_files(doc.data)
    checker.etcd_discovery(doc.data)
    return checker.problems


class _Checker:
    """coreos-cloudinit's rules over one parsed document (or part of one)."""

    def __init__(self, doc: MarkedDocument) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    def report(self, path: Path_, message: str, *, key: bool = True,
               severity: str = "warning") -> None:
        self.problems.append(self.doc.problem(path, message, key=key, severity=severity))

    # how Go reads a value

    def kind(self, path: Path_, value: Any) -> str:
        """The kind Go's YAML gives the value (what coreos-cloudinit's types are checked on)."""
        if isinstance(value, dict):
            return MAPPING
        if isinstance(value, list):
            return LIST
        scalar = self.doc.scalar(path)
        if scalar is None:
            return _python_kind(value)
        if not scalar.implicit:
            return _TAG_KINDS.get(scalar.tag.rsplit(":", 1)[-1], STRING)
        return _go_plain_kind(scalar.text)

    def text(self, path: Path_, value: Any) -> str:
        """The string a string field receives: the scalar as written (binary: decoded)."""
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        scalar = self.doc.scalar(path)
        if scalar is not None:
            return scalar.text
        return _go_format(value)

    def raw(self, path: Path_, value: Any) -> bytes | None:
        """A scalar's bytes as coreos-cloudinit sees them; None for anything else."""
        if isinstance(value, bytes):
            return value
        if value is None or isinstance(value, (dict, list)):
            return None
        return self.text(path, value).encode("utf-8", "surrogatepass")

    # structure and validity, walking the document and the rules together

    def value(self, path: Path_, name: str, value: Any, rule: Field) -> None:
        kind = self.kind(path, value)
        if kind not in _ACCEPTS[rule.kind]:
            self.report(path, f'incorrect type for "{name}" (want {rule.human_type()}): '
                              f"{self._got(path, value, kind, rule)}")
            return
        if rule.kind == MAPPING:
            self.mapping(path, value, rule)
        elif rule.kind == LIST:
            assert rule.item is not None
            for index, item in enumerate(value):
                self.value(path + (index,), f"{name}[{index}]", item, rule.item)
        else:
            self.scalar(path, name, value, rule)

    def mapping(self, path: Path_, value: dict, rule: Field) -> None:
        seen: dict[str, str] = {}
        for key, child in value.items():
            canon = canonical(key)
            child_rule = rule.keys.get(canon)
            child_path = path + (key,)
            if child_rule is None:
                self.report(child_path, f'unrecognized key "{key}"{_suggest(key, rule.keys)}')
                if path == ("coreos",) and canon == "write_files":
                    self.report(child_path, "write_files doesn't belong under coreos; move it "
                                            "to the top level", severity="info")
                continue
            if canon in seen:
                first = self.doc.where(path + (seen[canon],), key=True)[0]
                self.report(child_path, f'duplicate key "{key}": cloud-init reads it as '
                                        f'"{seen[canon]}" (line {first}) because "-" and "_" '
                                        "in keys are alike; remove one", severity="error")
                continue
            seen[canon] = key
            if child_rule.deprecated:
                self.report(child_path, f'deprecated key "{key}" ({child_rule.deprecated})')
            if child_rule.hint:
                self.report(child_path, child_rule.hint.format(key=key))
            if child is None and canon in rule.required:
                self.report(child_path, f'"{key}" must not be empty', severity="error")
                continue
            self.value(child_path, key, child, child_rule)
        for required in rule.required:
            if required not in seen:
                where = f' in "{_name(path)}"' if path else ""
                self.report(path, f'missing required key "{required}"{where}', key=False,
                            severity="error")

    def scalar(self, path: Path_, name: str, value: Any, rule: Field) -> None:
        text = self.text(path, value)  # only string fields carry patterns
        if text == "":
            return  # Go's zero value passes every pattern
        if rule.valid and not _matches(rule.valid, text):
            self.report(path, f'invalid value {text} for "{name}" '
                              f"({_describe_valid(name, rule.valid)})",
                        key=False, severity="error")
        if rule.advice and not _matches(rule.advice, text):
            self.report(path, f'value {text} for "{name}" passes coreos-cloudinit\'s validator '
                              f"but fails at boot ({_describe_valid(name, rule.advice)})",
                        key=False)

    def _got(self, path: Path_, value: Any, kind: str, rule: Field) -> str:
        if kind == NULL:
            return "the value is empty"
        got = "got " + _KIND_WORDS.get(kind, value_kind(value))
        scalar = self.doc.scalar(path)
        if scalar is not None and not scalar.implicit and kind == STRING:
            if rule.kind == BOOL and scalar.text in _GO_BOOLS:
                return f'{got} "{_clip(scalar.text)}"; remove the quotes'
            if rule.kind in (INT, FLOAT) and _go_plain_kind(scalar.text) in _ACCEPTS[rule.kind]:
                return f'{got} "{_clip(scalar.text)}"; remove the quotes'
        return got

    # coreos-cloudinit's rules on write_files and on etcd v0.4's discovery

    def write_files(self, data: dict) -> None:
        for key, files in data.items():
            if canonical(key) != "write_files" or not isinstance(files, list):
                continue
            for index, entry in enumerate(files):
                if isinstance(entry, dict):
                    self.write_file((key, index), entry)

    def write_file(self, path: Path_, entry: dict) -> None:
        fields = {canonical(k): k for k in entry}
        if "path" in fields:
            where = path + (fields["path"],)
            target = entry[fields["path"]]
            if target is not None and not isinstance(target, (dict, list)):
                self.write_file_path(where, self.text(where, target))
        if "encoding" in fields and entry[fields["encoding"]] is not None:
            self.encoded_content(path, entry, fields)

    def write_file_path(self, where: Path_, target: str) -> None:
        if on_read_only_usr(target):
            self.report(where, f'file cannot be written to a read-only filesystem: '
                               f'"{_clip(target)}" is under /usr; write under /etc, /opt or '
                               "/var instead", key=False, severity="error")
        elif target and not target.startswith("/"):
            self.report(where, f'write_files path "{_clip(target)}" is relative: '
                               f'coreos-cloudinit writes it as "/{_clip(target)}"; '
                               "write the absolute path", key=False)

    def encoded_content(self, path: Path_, entry: dict, fields: dict[str, str]) -> None:
        """coreos-cloudinit's checkEncoding: reported on the content, as it does."""
        encoding_path = path + (fields["encoding"],)
        encoding_value = entry[fields["encoding"]]
        encoding = (self.text(encoding_path, encoding_value)
                    if not isinstance(encoding_value, (dict, list)) else "<not a string>")
        content_key = fields.get("content")
        content_path = path + (content_key,) if content_key else encoding_path
        content = self.raw(content_path, entry[content_key]) if content_key else None
        try:
            if encoding not in ENCODINGS and encoding != "":
                raise UndecodableContent(f"coreos-cloudinit knows no such encoding (it knows "
                                         f"{', '.join(ENCODINGS)})")
            if content is None:
                raise UndecodableContent("the file has no content")
            decode_content(content, encoding)
        except UndecodableContent as err:
            self.report(content_path, f'content cannot be decoded as "{encoding}": {err}',
                        key=False, severity="error")
            return
        body = gzip_body_problem(content, encoding)
        if body:
            self.report(content_path, f"{body}: coreos-cloudinit writes only what it could "
                                      "decompress", key=False)

    def etcd_discovery(self, data: dict) -> None:
        for coreos_key, coreos in _children(data, "coreos"):
            for etcd_key, etcd in _children(coreos, "etcd"):
                for key, value in _children(etcd, "discovery"):
                    where = (coreos_key, etcd_key, key)
                    if value is not None and not isinstance(value, (dict, list)) \
                            and not _request_uri(self.text(where, value)):
                        self.report(where, "discovery URL is not valid: give an absolute URL "
                                           "such as https://discovery.etcd.io/<token>",
                                    key=False)


def _children(value: Any, name: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            if canonical(key) == name:
                yield key, child


def _request_uri(text: str) -> bool:
    """Go's url.ParseRequestURI accepts an absolute URL (a scheme) or an absolute path."""
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", text)) or text.startswith("/")


def _go_plain_kind(text: str) -> str:
    """The type go-yaml v1 resolves a plain (unquoted, untagged) scalar to."""
    if text in _GO_BOOLS:
        return BOOL
    if text in _GO_NULLS:
        return NULL
    if text in _GO_FLOAT_WORDS:
        return FLOAT
    if not text or text[0] not in "+-.0123456789":
        return STRING
    plain = text.replace("_", "")
    if _GO_INT.fullmatch(plain) or _GO_BINARY_INT.fullmatch(plain):
        number = _go_int(plain)
        if -(2**63) <= number < 2**63:
            return INT
        if 0 <= number < 2**64:
            return UINT
    try:
        float(plain)
    except ValueError:
        return STRING
    return FLOAT


def _go_int(plain: str) -> int:
    sign = -1 if plain.startswith("-") else 1
    digits = plain.lstrip("+-")
    if digits[:2] in ("0x", "0X", "0b"):
        return sign * int(digits, 0)
    if digits.startswith("0") and len(digits) > 1:
        return sign * int(digits, 8)
    return sign * int(digits)


def _python_kind(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return FLOAT
    return STRING


def _go_format(value: Any) -> str:
    """A value as Go's `%v` prints it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)


def _matches(valid: str, text: str) -> bool:
    # Go's `$` matches only at the very end; Python's also before a final newline.
    pattern = valid[:-1] + r"\Z" if valid.endswith("$") else valid
    return re.search(pattern, text) is not None


def _describe_valid(name: str, valid: str) -> str:
    help_text = _VALID_HELP.get(canonical(name))
    if help_text:
        return help_text
    choices = _ALTERNATIVES.fullmatch(valid)
    if choices:
        return "want one of: " + ", ".join(c.replace("\\", "")
                                           for c in choices.group(1).split("|"))
    literal = _LITERAL.fullmatch(valid)
    if literal:
        return f'want "{literal.group(1)}"'
    return f"want a value matching {valid}"


def _suggest(key: str, known: Any) -> str:
    """did_you_mean over the known keys, spelled in the user's style (`-` or `_`)."""
    choices = [k.replace("_", "-") for k in known] if "-" in key else list(known)
    return did_you_mean(key, choices).replace("`", '"')


def _name(path: Path_) -> str:
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


__all__ = ["is_cloud_config", "validate_user_data"]
