"""Validate CoreOS user-data the way `coreos-cloudinit -validate` does, a little stricter.

Like coreos-cloudinit's `validate` package this runs two rules over the parsed
document: *structure* (every key is known and its value has a compatible
type) and *validity* (values match the key's `valid` pattern). Findings it
reports as warnings stay warnings here. On top of that, things that break a
CoreOS boot are errors: a missing `#cloud-config` header, malformed YAML, a
unit without a name, a `write_files` path that is relative or under the
read-only `/usr`. Every problem carries the line and column to edit.
"""

from __future__ import annotations

import datetime
import posixpath
import re
from typing import Any

from provision.cloudconfig.rules import (
    BOOL,
    CLOUD_CONFIG,
    INT,
    LIST,
    MAPPING,
    STRING,
    Field,
    canonical,
)
from provision.errors import Problem, UserError, did_you_mean
from provision.yamlmarks import MarkedDocument, Path_, load_yaml, value_kind

HEADER = "#cloud-config"

# The plain scalars YAML 1.1 (PyYAML, and the Go YAML coreos-cloudinit uses) reads as booleans.
_YAML11_BOOLS = frozenset({"yes", "no", "true", "false", "on", "off"})
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # what YAML counts as a new line
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOKEN = re.compile(r"[^\s,\[\]{}#]+")
_ALTERNATIVES = re.compile(r"\^\(([^()]*)\)\$")
_LITERAL = re.compile(r"\^([\w.-]+)\$")


def validate_user_data(text: str, file: str) -> list[Problem]:
    """All problems in one user-data file, sorted by position; never raises."""
    problems = _check_header(text, file)
    if not text.startswith("#!"):
        problems.extend(_check_body(text, file))
    return sorted(problems, key=_order)


def _order(problem: Problem) -> tuple:
    return (problem.line or 0, problem.col or 0, problem.severity, problem.message)


def _check_header(text: str, file: str) -> list[Problem]:
    first = text.split("\n", 1)[0].removesuffix("\r")
    if first == HEADER:
        return []
    if text.startswith("#!"):
        message = (f'starts with "#!", so coreos-cloudinit would run it as a script, not read it '
                   f'as a cloud-config; make the first line "{HEADER}"')
    elif first.lstrip("\ufeff") == HEADER:
        message = f'remove the byte-order mark before "{HEADER}" on the first line'
    else:
        found = "the file is empty" if not text else f'found "{_clip(first)}"'
        message = (f'the first line must be exactly "{HEADER}" ({found}); coreos-cloudinit '
                   "treats user-data without it as a script, not a cloud-config")
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
        doc = load_yaml(text, file)
    except UserError as err:
        return list(err.problems)
    if doc.data is None:
        return []
    checker = _Checker(doc, text)
    if not isinstance(doc.data, dict):
        checker.report((), f"the top level must be a mapping (keys like coreos: and "
                           f"write_files:), not {value_kind(doc.data)}",
                       key=False, severity="error")
    else:
        checker.mapping((), doc.data, CLOUD_CONFIG)
    return checker.problems


class _Checker:
    def __init__(self, doc: MarkedDocument, text: str) -> None:
        self.doc = doc
        self.lines = _LINE_BREAK.split(text)
        self.problems: list[Problem] = []

    def report(self, path: Path_, message: str, *, key: bool = True,
               severity: str = "warning") -> None:
        self.problems.append(self.doc.problem(path, message, key=key, severity=severity))

    def token(self, path: Path_) -> str | None:
        """The value's plain-scalar text as written, for messages about YAML's implicit typing."""
        line, col = self.doc.marks.get(path, (None, None))
        if line is None or col is None or line > len(self.lines):
            return None
        found = _TOKEN.match(self.lines[line - 1], col - 1)
        return found.group() if found else None

    # structure and validity, walking the document and the rules together

    def value(self, path: Path_, name: str, value: Any, rule: Field) -> None:
        if rule.deprecated:
            self.report(path, rule.deprecated.format(key=name))
        if not _compatible(value, rule.kind):
            self.report(path, f'incorrect type for "{name}" (want {rule.human_type()}): '
                              f"{self._got(path, value, rule)}")
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
                continue
            if canon in seen:
                first = self.doc.where(path + (seen[canon],), key=True)[0]
                self.report(child_path, f'duplicate key "{key}": cloud-init reads it as '
                                        f'"{seen[canon]}" (line {first}) because "-" and "_" '
                                        "in keys are alike; remove one", severity="error")
                continue
            seen[canon] = key
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
        if rule.check == "permissions" and _is_int(value):
            self.int_permissions(path, name, value)
            return
        if rule.valid and not _is_zero(value):
            if isinstance(value, bool):
                self.bool_for_choice(path, name, value, rule)
            elif not _matches(rule.valid, _go_text(value)):
                self.report(path, f'invalid value {_go_text(value)} for "{name}" '
                                  f"({_describe_valid(rule)})", key=False)
        if rule.check == "write_file_path":
            self.write_file_path(path, _go_text(value))

    def bool_for_choice(self, path: Path_, name: str, value: bool, rule: Field) -> None:
        assert rule.valid is not None
        meaning = "true" if value else "false"
        raw = self.token(path)
        spelled = raw if raw is not None and raw.lower() in _YAML11_BOOLS else meaning
        if _matches(rule.valid, spelled):
            message = (f'invalid value {spelled} for "{name}": YAML 1.1 reads unquoted {spelled} '
                       f'as the boolean {meaning}; write "{spelled}" in quotes')
        else:
            message = (f'invalid value {spelled} for "{name}" (YAML reads it as the boolean '
                       f"{meaning}; {_describe_valid(rule)})")
        self.report(path, message, key=False)

    def int_permissions(self, path: Path_, name: str, value: int) -> None:
        raw = self.token(path) or str(value)
        if len(raw) > 1 and raw.startswith("0") and raw.isdigit():
            detail = (f"YAML 1.1 reads unquoted {raw} as an octal number (decimal {value}), "
                      f'not the mode "{raw}"')
        else:
            detail = f"unquoted {raw} is a YAML number, not a string"
        self.report(path, f'{name} should be a quoted string like "0644": {detail}', key=False)

    def write_file_path(self, path: Path_, target: str) -> None:
        if not target.startswith("/"):
            self.report(path, f'write_files path "{_clip(target)}" is relative; coreos-cloudinit '
                              'needs an absolute path such as "/etc/..."', key=False,
                        severity="error")
            return
        normal = "/" + posixpath.normpath(target).lstrip("/")
        if normal == "/usr" or normal.startswith("/usr/"):
            self.report(path, f'write_files path "{_clip(target)}" is under /usr, which is '
                              "read-only on CoreOS; write under /etc, /opt or /var instead",
                        key=False, severity="error")

    def _got(self, path: Path_, value: Any, rule: Field) -> str:
        if value is None:
            return "the value is empty"
        got = f"got {value_kind(value)}"
        if rule.kind == BOOL and isinstance(value, str) and value.lower() in _YAML11_BOOLS:
            return f'{got} "{_clip(value)}"; remove the quotes'
        if rule.kind == INT and isinstance(value, str) and value.strip().isdigit():
            return f'{got} "{_clip(value)}"; remove the quotes'
        return got


def _compatible(value: Any, kind: str) -> bool:
    """coreos-cloudinit's isCompatible: a string key also takes numbers and booleans."""
    if kind == STRING:
        return isinstance(value, (str, int, float, bytes, datetime.date))
    if kind == INT:
        return _is_int(value)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == LIST:
        return isinstance(value, list)
    if kind == MAPPING:
        return isinstance(value, dict)
    raise ValueError(f"unknown kind {kind!r} in cloud-config rules")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_zero(value: Any) -> bool:
    """coreos-cloudinit treats zero values ("" and 0) as valid for every pattern.

    `False` is zero in Go too, but here it is flagged: it comes from an unquoted
    `off`/`no`, which the service would receive as "false".
    """
    return value == "" or (_is_int(value) and value == 0)


def _go_text(value: Any) -> str:
    """The value as coreos-cloudinit formats it (`%v`) before matching a pattern."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _matches(valid: str, text: str) -> bool:
    # Go's `$` matches only at the very end; Python's also before a final newline.
    pattern = valid[:-1] + r"\Z" if valid.endswith("$") else valid
    return re.search(pattern, text) is not None


def _describe_valid(rule: Field) -> str:
    assert rule.valid is not None
    if rule.check == "permissions":
        return 'want an octal mode like "0644"'
    choices = _ALTERNATIVES.fullmatch(rule.valid)
    if choices:
        return "want one of: " + ", ".join(c.replace("\\", "")
                                           for c in choices.group(1).split("|"))
    literal = _LITERAL.fullmatch(rule.valid)
    if literal:
        return f'want "{literal.group(1)}"'
    return f"want a value matching {rule.valid}"


def _suggest(key: str, known: Any) -> str:
    """did_you_mean over the known keys, spelled in the user's style (`-` or `_`)."""
    choices = [k.replace("_", "-") for k in known] if "-" in key else list(known)
    return did_you_mean(key, choices).replace("`", '"')


def _name(path: Path_) -> str:
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name
