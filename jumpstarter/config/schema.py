"""Declared config sections: the field list is the schema, and every mistake reads `file:line: key: problem`.

Every config of the project (exporter, inventory, client, controllerd, routerd) reads its YAML
through `load_document` and `Section.read`, so unknown keys are refused everywhere (an allowlist)
and every error is a `ConfigError` that names the file, the line (PyYAML's node marks, kept by
`yamlload`) and the dotted key:

    TLS = Section(Field("cert", path(), default=None), Field("key", path(), default=None))
    ROUTER = Section(Field("listen", text("HOST:PORT"), default="0.0.0.0:8083"), Field("tls", TLS, default=EMPTY))
    values = load_document("/etc/jumpstarter/routerd.yaml", ROUTER, empty_ok=True)
    values["listen"], values["tls"]["cert"]      # typed; values.at("listen").error("...") for cross-key rules

A check is any `(value, where) -> typed value` that raises `where.error(problem)`; the factories below
(`text`, `number`, `boolean`, `choice`, `pattern`, `named`, `path`, `list_of`, `text_mapping`) cover
the common kinds, and a Section is itself a check for a nested mapping.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from jumpstarter.config.yamlload import Located, Where, load_yaml
from jumpstarter.errors import ConfigError
from jumpstarter.names import InvalidName, shown

Check = Callable[[Any, Where], Any]


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED: Any = _Marker("REQUIRED")  # an absent key is an error
OMIT: Any = _Marker("OMIT")  # an absent key is left out of the values
EMPTY: Any = _Marker("EMPTY")  # an absent key reads as an empty mapping (a nested Section's own defaults)


def got(value: Any) -> str:
    """How an error shows the value it refused: short text, a scalar, or the kind of a container."""
    if isinstance(value, str):
        return shown(value)
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float)):
        return repr(value)
    return "mapping" if isinstance(value, dict) else type(value).__name__


@dataclass(frozen=True)
class Field:
    """One key of a section: how its value is checked and what an absent key means."""

    key: str
    check: Check
    default: Any = REQUIRED  # a final value (not checked), REQUIRED, OMIT or EMPTY
    attr: str = ""  # the name in the values; the key by default
    # Which values count as absent: only a missing key, also `null`, or any falsy value ("", 0, {}, []).
    unset: Literal["missing", "null", "falsy"] = "missing"
    missing: str = ""  # the problem when a REQUIRED key is absent; "missing 'KEY'" by default

    def absent(self, mapping: dict[str, Any]) -> bool:
        if self.key not in mapping:
            return True
        value = mapping[self.key]
        return (self.unset == "null" and value is None) or (self.unset == "falsy" and not value)


class Values(dict):  # type: ignore[type-arg]
    """The typed values of one section, and where they came from (for errors across several keys)."""

    def __init__(self, mapping: Located, where: Where) -> None:
        super().__init__()
        self.mapping = mapping
        self.where = where

    def at(self, key: str) -> Where:
        """Where `key` is (the section's line when the key is absent), to report a rule across keys."""
        return self.where.child(self.mapping, key)


class Section:
    """A mapping with declared fields: unknown keys are refused, each field is checked or defaulted."""

    def __init__(self, *fields: Field, what: str = "a mapping", unknown: str = "unknown key") -> None:
        self.fields = fields
        self.what = what
        self.unknown = unknown
        self.keys = frozenset(f.key for f in fields)

    def check_keys(self, value: Any, where: Where) -> Located:
        """`value` if it is a mapping whose keys are all declared (the first unknown key is named)."""
        if not isinstance(value, dict):
            raise where.error(f"expected {self.what}, got {got(value)}")
        for key in value:
            if str(key) not in self.keys:
                accepted = ", ".join(sorted(self.keys)) or "none"
                raise where.child(value, str(key)).error(f"{self.unknown} (accepted: {accepted})")
        return value if isinstance(value, Located) else _located(value, where.line)

    def read(self, value: Any, where: Where) -> Values:
        """The checked values of `value` by attribute name; raises ConfigError at the first mistake."""
        mapping = self.check_keys(value, where)
        values = Values(mapping, where)
        for field in self.fields:
            name = field.attr or field.key
            here = where.child(mapping, field.key)
            if not field.absent(mapping):
                values[name] = field.check(mapping[field.key], here)
            elif field.default is REQUIRED:
                raise where.error(field.missing or f"missing {field.key!r}")
            elif field.default is EMPTY:
                values[name] = field.check(_located({}, here.line), here)
            elif field.default is not OMIT:
                values[name] = copy.copy(field.default)
        return values

    def __call__(self, value: Any, where: Where) -> Values:
        return self.read(value, where)


def _located(mapping: dict[str, Any], line: int) -> Located:
    out = Located(mapping)
    out.line, out.key_lines = line, dict(getattr(mapping, "key_lines", {}))
    return out


def load_document(path: str, section: Section, *, empty_ok: bool = False) -> Values:
    """Parse the YAML file at `path` and read it as `section` (an empty file is `{}` when `empty_ok`)."""
    doc = load_yaml(path)
    if doc is None and empty_ok:
        doc = _located({}, 1)
    elif doc is None:  # "got null" would leave a new user guessing
        raise ConfigError(f"{path}: the file is empty (no YAML document in it); expected {section.what}")
    return section.read(doc, Where(path, (), getattr(doc, "line", 1)))


# The kinds of check. Each returns a Check; a failing value gets `expected WHAT, got VALUE`.


def anything(value: Any, where: Where) -> Any:
    """Any value: the consumer (a driver's constructor) validates it."""
    return value


def text(what: str = "text", *, nonempty: bool = False) -> Check:
    def check(value: Any, where: Where) -> str:
        if not isinstance(value, str) or (nonempty and not value):
            raise where.error(f"expected {what}, got {got(value)}")
        return value

    return check


def stringified(value: Any, where: Where) -> str:
    """Any scalar, as text (for values older configs wrote unquoted, like `ca:` or a description)."""
    return str(value)


def number(*, whole: bool = False, unit: str = "", at_most: float | None = None, too_big: str = "") -> Check:
    """A positive number (a positive whole number when `whole`), optionally at most `at_most`."""
    what = "a positive whole number" if whole else f"a positive number{' of ' + unit if unit else ''}"

    def check(value: Any, where: Where) -> float | int:
        wrong_kind = not isinstance(value, int) if whole else not isinstance(value, (int, float))
        if isinstance(value, bool) or wrong_kind or value <= 0:
            raise where.error(f"expected {what}, got {got(value)}")
        if at_most is not None and value > at_most:
            raise where.error(too_big or f"at most {at_most}")
        return int(value) if whole else float(value)

    return check


def boolean(value: Any, where: Where) -> bool:
    if not isinstance(value, bool):
        raise where.error(f"expected true or false, got {got(value)}")
    return value


def choice(*options: str) -> Check:
    what = options[0] if len(options) == 1 else f"one of {', '.join(options)}"

    def check(value: Any, where: Where) -> str:
        if not isinstance(value, str) or value not in options:
            raise where.error(f"expected {what}, got {got(value)}")
        return value

    return check


def pattern(regex: re.Pattern[str], problem: str) -> Check:
    """Text that matches `regex`; `problem` says the rule (the value is not repeated: it may be long)."""

    def check(value: Any, where: Where) -> str:
        if not isinstance(value, str) or not regex.match(value):
            raise where.error(problem)
        return value

    return check


def named(rule: Callable[[Any], Any]) -> Check:
    """A rule of jumpstarter/names.py (`check_host`, `check_labels`, ...) as a check."""

    def check(value: Any, where: Where) -> Any:
        try:
            return rule(value)
        except InvalidName as exc:
            raise where.error(str(exc)) from None

    return check


def path(what: str = "a file path") -> Check:
    """A non-empty file path; `~` is expanded and a relative path is relative to the config file."""

    def check(value: Any, where: Where) -> str:
        if not isinstance(value, str) or not value:
            raise where.error(f"expected {what}, got {got(value)}")
        return os.path.join(os.path.dirname(os.path.abspath(where.path)), os.path.expanduser(value))

    return check


def list_of(item: Check, what: str = "a list") -> Check:
    """A list whose items pass `item` (an item's error names it as `key.N`)."""

    def check(value: Any, where: Where) -> list[Any]:
        if not isinstance(value, list):
            raise where.error(f"expected {what}, got {got(value)}")
        return [item(v, where.child(value, str(i))) for i, v in enumerate(value)]

    return check


def mapping(what: str = "a mapping") -> Check:
    """A mapping, as written (its keys are checked by whoever reads it)."""

    def check(value: Any, where: Where) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise where.error(f"expected {what}, got {got(value)}")
        return value

    return check


def text_mapping(what: str = "a mapping") -> Check:
    """A mapping of scalars, as text keys and text values (labels, method descriptions)."""

    def check(value: Any, where: Where) -> dict[str, str]:
        if not isinstance(value, dict):
            raise where.error(f"expected {what}, got {got(value)}")
        return {str(k): str(v) for k, v in value.items()}

    return check


__all__ = [
    "EMPTY",
    "OMIT",
    "REQUIRED",
    "Check",
    "ConfigError",
    "Field",
    "Section",
    "Values",
    "anything",
    "boolean",
    "choice",
    "got",
    "list_of",
    "load_document",
    "mapping",
    "named",
    "number",
    "path",
    "pattern",
    "stringified",
    "text",
    "text_mapping",
]
