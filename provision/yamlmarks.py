"""Load YAML into plain Python values while remembering where each value stood.

PyYAML's safe loader forgets positions, silently keeps the last of two equal
keys and expands aliases without bound. This loader composes the node graph,
converts it itself and records `(line, col)` (1-based) for every path, so
later checks can point at the line a user must edit. It refuses duplicate
keys, non-string keys, documents nested too deep and alias expansions past a
budget (a "billion laughs" document is small on disk and huge in memory).
"""

from __future__ import annotations

import datetime
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provision.errors import Problem, UserError

try:
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    _Loader = yaml.SafeLoader

MAX_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 500_000

Path_ = tuple[Hashable, ...]
_RESOLVER = yaml.resolver.Resolver()


@dataclass(frozen=True)
class Scalar:
    """A scalar as written: PyYAML's tag for it and its text (quotes and escapes resolved).

    `implicit` is true for a plain scalar with no explicit tag, whose type each YAML
    library resolves by its own rules; quoted, block and tagged scalars are what they say.
    """

    tag: str
    text: str
    implicit: bool


@dataclass
class MarkedDocument:
    """A parsed YAML document: `data` plus the position of every path in it."""

    file: str
    data: Any
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    # Each scalar's node, kept on request (`load_yaml(..., keep_scalars=True)`): validators
    # that must read a value the way another YAML library does (Go's, for cloud-configs)
    # need the text before PyYAML's YAML 1.1 resolution turned `0644` into 420 or `off`
    # into False. See `scalar`.
    scalar_nodes: dict[Path_, yaml.ScalarNode] = field(default_factory=dict)

    def where(self, path: Path_, *, key: bool = False) -> tuple[int | None, int | None]:
        """Position of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        table = self.key_marks if key else self.marks
        while True:
            if path in table:
                return table[path]
            if key and path in self.marks:
                return self.marks[path]
            if not path:
                return (None, None)
            path = path[:-1]

    def scalar(self, path: Path_) -> Scalar | None:
        """The scalar at `path` as written, if scalars were kept and it is one."""
        node = self.scalar_nodes.get(tuple(path))
        if node is None:
            return None
        plain = not node.style  # None (pure PyYAML) or "" (libyaml) for a plain scalar
        implicit = node.tag == _RESOLVER.resolve(yaml.ScalarNode, node.value, (plain, not plain))
        return Scalar(node.tag, node.value, implicit and plain)

    def problem(self, path: Path_, message: str, *, key: bool = False,
                severity: str = "error") -> Problem:
        line, col = self.where(path, key=key)
        return Problem(self.file, line, col, message, severity)


def dotted(path: Path_) -> str:
    """`('nodes', 'overrides', 'core-02', 'ip')` -> `nodes.overrides.core-02.ip`."""
    return ".".join(str(p) for p in path) or "(top level)"


def load_yaml_file(path: str | Path) -> MarkedDocument:
    path = Path(path)

    def fail(message: str) -> UserError:
        return UserError([Problem(str(path), None, None, message)])

    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise fail("no such file; check the path") from None
    except IsADirectoryError:
        raise fail("is a directory, not a YAML file") from None
    except OSError as err:
        raise fail(f"cannot read: {err.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise UserError([Problem(str(path), None, None,
                                 f"file is larger than {MAX_BYTES // (1024 * 1024)} MiB; "
                                 "split it or remove what is not needed")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError([Problem(str(path), line, None,
                                 "not valid UTF-8; save the file as UTF-8")]) from None
    return load_yaml(text, str(path))


def load_yaml(text: str, file: str, *, keep_scalars: bool = False) -> MarkedDocument:
    if len(text) > MAX_BYTES:
        raise UserError([Problem(file, None, None, "document too large")])
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate cannot come from a real file
        line = text.count("\n", 0, err.start) + 1
        raise UserError([Problem(file, line, None, "text holds an unpaired surrogate "
                                                   "character; save the file as UTF-8")]) from None
    try:
        _check_depth(text, file)
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = err.problem or err.context or "malformed YAML"
        if "maximum nesting depth" in what:  # libyaml ≥ 0.2.6 stops deep flow nesting itself
            what = f"YAML nested deeper than {MAX_DEPTH} levels"
            if mark is not None:
                raise UserError([Problem(file, mark.line + 1, mark.column + 1, what)]) from None
        if mark is None:
            raise UserError([Problem(file, None, None, f"malformed YAML: {what}")]) from None
        raise UserError([Problem(file, mark.line + 1, mark.column + 1,
                                 f"malformed YAML: {what}")]) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        col = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        code = _codepoint(err.character)
        raise UserError([Problem(file, line, col, f"character U+{code:04X} is not allowed "
                                                  "in YAML; remove it")]) from None
    except yaml.YAMLError as err:
        raise UserError([Problem(file, None, None, f"malformed YAML: {err}")]) from None
    except RecursionError:
        raise UserError([Problem(file, None, None,
                                 f"YAML nested deeper than {MAX_DEPTH} levels")]) from None
    doc = MarkedDocument(file, None)
    if node is None:
        return doc
    _check_expansion(node, file)
    converter = _Converter(doc, keep_scalars)
    doc.data = converter.convert(node, ())
    if converter.problems:
        raise UserError(converter.problems)
    return doc


def _check_depth(text: str, file: str) -> None:
    """Refuse deep nesting before composing: libyaml's composer recurses per level and
    crashes the interpreter far below Python's recursion limit."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise UserError([Problem(file, mark.line + 1, mark.column + 1,
                                         f"YAML nested deeper than {MAX_DEPTH} levels")])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_expansion(root: yaml.Node, file: str) -> None:
    """Refuse an alias bomb from the composed graph's shape, before expanding anything.

    An alias is the same node object wherever it is used, so each distinct node's expanded
    size is measured once (the converter's own budget stays as a backstop). Without this a
    bomb cost seconds of CPU to refuse."""
    sizes: dict[int, int] = {}
    measuring: set[int] = set()  # a node inside itself: the converter reports the depth

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in measuring or depth > MAX_DEPTH or isinstance(node, yaml.ScalarNode):
            return 1  # too deep or inside itself: the converter says so
        measuring.add(key)
        children = ([n for pair in node.value for n in pair]
                    if isinstance(node, yaml.MappingNode) else node.value)
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_VALUES:
                mark = child.start_mark
                raise UserError([Problem(file, mark.line + 1, mark.column + 1,
                                         f"document expands to more than {MAX_VALUES} values "
                                         "(an alias bomb?); write the values out or use "
                                         "fewer aliases")])
        measuring.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


class _Converter:
    def __init__(self, doc: MarkedDocument, keep_scalars: bool = False) -> None:
        self.doc = doc
        self.keep_scalars = keep_scalars
        self.problems: list[Problem] = []
        self.budget = MAX_VALUES
        self.scalars = _Loader("")

    def _problem(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(self.doc.file, mark.line + 1, mark.column + 1, message))

    def _spend(self, node: yaml.Node, cost: int = 1) -> bool:
        """Charge the expansion budget; False (and one problem) once it is spent."""
        was = self.budget
        self.budget -= cost
        if self.budget < 0:
            if was >= 0:
                self._problem(node, f"document expands to more than {MAX_VALUES} values "
                                    "(an alias bomb?); write the values out or use fewer aliases")
            return False
        return True

    def convert(self, node: yaml.Node, path: Path_) -> Any:
        if not self._spend(node):
            return None
        if len(path) > MAX_DEPTH:
            self._problem(node, f"YAML nested deeper than {MAX_DEPTH} levels")
            return None
        self.doc.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, path + (i,)) for i, item in enumerate(node.value)]
        if self.keep_scalars:
            self.doc.scalar_nodes[path] = node
        try:
            return self.scalars.construct_object(node)
        except yaml.constructor.ConstructorError as err:
            self._problem(node, f"bad value: {err.problem}")
            return None
        except (ValueError, TypeError, AttributeError, OverflowError):
            # An explicit tag on a scalar that does not fit it (`!!int x`, `!!timestamp
            # nope`) makes PyYAML's constructors fail with plain Python errors, which
            # would escape as tracebacks instead of one positioned line.
            self._problem(node, f"bad value: {node.value!r} is not a valid {node.tag}; "
                                "remove the tag or fix the value")
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict:
        result: dict = {}
        for key_node, value_node in self._entries(node):
            key = self._scalar_key(key_node)
            if not isinstance(key, str):
                self._problem(key_node, "mapping keys must be strings; quote the key")
                continue
            if key in result:
                first = self.doc.key_marks.get(path + (key,), (None, None))[0]
                self._problem(key_node, f"duplicate key `{key}` (first given on line {first}); "
                                        "remove one of them")
                continue
            self.doc.key_marks[path + (key,)] = (key_node.start_mark.line + 1,
                                                 key_node.start_mark.column + 1)
            result[key] = self.convert(value_node, path + (key,))
        return result

    def _scalar_key(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return None
        try:
            return self.scalars.construct_object(node)
        except (yaml.constructor.ConstructorError, ValueError, TypeError, AttributeError,
                OverflowError):  # a mis-tagged key is "not a string" (see convert)
            return None

    def _entries(self, node: yaml.MappingNode,
                 merging: frozenset[int] = frozenset()) -> list[tuple[yaml.Node, yaml.Node]]:
        """Mapping entries with `<<` merge keys resolved (explicit keys win).

        Merges are charged to the alias budget and a mapping merging itself is refused:
        `a: &a {<<: *a}` recursed until RecursionError and nested `<<: [*x, *x, ...]`
        expanded exponentially without touching the budget.
        """
        if not self._spend(node, 1 + len(node.value)):
            return []
        merging = merging | {id(node)}
        own: list[tuple[yaml.Node, yaml.Node]] = []
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) \
                    else [value_node]
                for source in sources:
                    if isinstance(source, yaml.MappingNode) and id(source) in merging:
                        self._problem(source, "`<<` merges a mapping into itself; remove "
                                              "the alias")
                    elif isinstance(source, yaml.MappingNode):
                        merged.extend(self._entries(source, merging))
                    else:
                        self._problem(source, "`<<` merges only mappings")
            else:
                own.append((key_node, value_node))
        own_keys = {k.value for k, _ in own if isinstance(k, yaml.ScalarNode)}
        seen: set = set()
        kept = []
        for key_node, value_node in merged:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if name in own_keys or name in seen:
                continue
            seen.add(name)
            kept.append((key_node, value_node))
        return own + kept


def _codepoint(character: int | str) -> int:
    return character if isinstance(character, int) else ord(character)


def value_kind(value: Any) -> str:
    """How a YAML value reads to a user: 'a string', 'a list', …"""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "an empty value"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    return type(value).__name__
