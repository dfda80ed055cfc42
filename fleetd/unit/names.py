"""systemd unit names: `prefix.suffix`, templates `prefix@.suffix`, instances `prefix@i.suffix`.

Names end up in etcd keys, file paths and systemctl argument lists, so anything
outside systemd's own alphabet is refused here, once, with a message that says
what to change.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

KNOWN_SUFFIXES: tuple[str, ...] = (
    "service", "socket", "device", "mount", "automount", "swap",
    "target", "path", "timer", "slice", "scope",
)
MAX_NAME_LENGTH = 255  # systemd's UNIT_NAME_MAX minus the C string terminator

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
PREFIX_CHARS = _ALNUM | frozenset(":_.\\-")
INSTANCE_CHARS = PREFIX_CHARS | {"@"}
_SHOWN_MAX = 80


class UnitNameError(ValueError):
    """A unit name systemd would refuse; `col` is the 1-based position of the offending char."""

    def __init__(self, name: str, message: str, col: int | None = None) -> None:
        self.name = name
        self.message = message
        self.col = col
        super().__init__(f"invalid unit name {_shown(name)}: {message}")


def _shown(name: object) -> str:
    # A 10 MB "name" must not become a 10 MB error message.
    text = repr(name)
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 4] + "...'"


@dataclass(frozen=True)
class UnitName:
    """A validated unit name; `instance` is None (plain), "" (template) or the instance."""

    prefix: str
    instance: str | None
    suffix: str

    def __post_init__(self) -> None:
        # Building from parts must not smuggle in a name that parsing would refuse
        # (e.g. prefix "a@b" would silently turn into an instance).
        parts = _split_checked(self.full)
        if parts != (self.prefix, self.instance, self.suffix):
            raise UnitNameError(self.full, "the parts do not form this name again; the prefix "
                                           "must not contain '@' and the suffix must be a type "
                                           "such as service")

    @property
    def full(self) -> str:
        if self.instance is None:
            return f"{self.prefix}.{self.suffix}"
        return f"{self.prefix}@{self.instance}.{self.suffix}"

    @property
    def stem(self) -> str:
        """The name without its type suffix (systemd's %N)."""
        return self.full[: -len(self.suffix) - 1]

    @property
    def is_template(self) -> bool:
        return self.instance == ""

    @property
    def is_instance(self) -> bool:
        return bool(self.instance)

    @property
    def template(self) -> str | None:
        """`web@.service` for `web@1.service`; None for anything that is not an instance."""
        if not self.is_instance:
            return None
        return f"{self.prefix}@.{self.suffix}"

    def instantiate(self, instance: str) -> UnitName:
        if not self.is_template:
            raise UnitNameError(self.full, "only a template such as web@.service can be "
                                           "instantiated")
        if not isinstance(instance, str) or not instance:
            raise UnitNameError(self.full, f"instance {_shown(instance)} must be a non-empty "
                                           "string such as 1 or east")
        return parse_unit_name(f"{self.prefix}@{instance}.{self.suffix}")

    def __str__(self) -> str:
        return self.full


def parse_unit_name(text: str) -> UnitName:
    prefix, instance, suffix = _split_checked(text)
    return UnitName(prefix, instance, suffix)


def is_valid_unit_name(text: str) -> bool:
    try:
        _split_checked(text)
    except UnitNameError:
        return False
    return True


def is_template_name(name: str) -> bool:
    """Whether a *valid* unit name is a template (`web@.service`), without parsing it again.

    The instance is what lies between the first '@' and the suffix's dot (the last '.'), so
    the name is a template exactly when that dot follows the first '@' at once."""
    at = name.find("@")
    return at >= 0 and name.rfind(".") == at + 1


def normalize_unit_name(text: str, default_suffix: str = "service") -> str:
    """fleetctl's convenience: `hello` → `hello.service`, `apache@1` → `apache@1.service`.

    The suffix is added only when the name does not already end in a known type, so
    `db.socket` stays as it is and `v1.2` becomes `v1.2.service`.
    """
    if default_suffix not in KNOWN_SUFFIXES:
        raise UnitNameError(f"x.{default_suffix}", f"default suffix {default_suffix!r} is not a "
                                                    f"unit type; use one of {_known_list()}")
    if isinstance(text, str) and text and text.rpartition(".")[2] not in KNOWN_SUFFIXES:
        text = f"{text}.{default_suffix}"
    return parse_unit_name(text).full


def _known_list() -> str:
    return ", ".join(KNOWN_SUFFIXES)


def _split_checked(text: str) -> tuple[str, str | None, str]:
    if not isinstance(text, str):
        raise UnitNameError(text, f"a unit name must be a string, not {type(text).__name__}")
    if not text:
        raise UnitNameError(text, "the name is empty; give one such as web.service")
    slash = text.find("/")
    if slash >= 0:
        raise UnitNameError(text, f"unit names cannot contain '/' (found at position "
                                  f"{slash + 1}); give the name of the unit, such as "
                                  "web.service, not a path", slash + 1)
    for i, ch in enumerate(text):
        if ch in INSTANCE_CHARS:
            continue
        if ord(ch) < 32 or ord(ch) == 127:
            what = "a NUL byte" if ch == "\0" else f"control character U+{ord(ch):04X}"
            raise UnitNameError(text, f"{what} at position {i + 1}; remove it", i + 1)
        raise UnitNameError(text, f"character {ch!r} at position {i + 1} is not allowed; unit "
                                  "names use letters, digits and : _ . - \\ (and '@' before "
                                  "the instance)", i + 1)
    if len(text) > MAX_NAME_LENGTH:
        raise UnitNameError(text, f"the name is {len(text)} characters long; systemd allows "
                                  f"at most {MAX_NAME_LENGTH}")
    stem, dot, suffix = text.rpartition(".")
    if not dot:
        raise UnitNameError(text, f"the name has no type suffix; add one, e.g. {text}.service")
    if not suffix:
        raise UnitNameError(text, f"the name ends with '.'; finish it with a type such as "
                                  f"{text}service")
    if suffix not in KNOWN_SUFFIXES:
        close = difflib.get_close_matches(suffix, KNOWN_SUFFIXES, n=1, cutoff=0.6)
        hint = (f"did you mean .{close[0]}?" if close
                else f"use one of {_known_list()}")
        raise UnitNameError(text, f"unknown unit type '.{suffix}'; {hint}", len(stem) + 2)
    prefix, at, instance = stem.partition("@")
    if not prefix:
        raise UnitNameError(text, "the part before '@' or the type suffix is empty; start "
                                  "with a name such as web", 1)
    if prefix.startswith("."):
        raise UnitNameError(text, "the name must not start with '.'", 1)
    return prefix, (instance if at else None), suffix
