"""Kubernetes label selectors (PROTOCOL.md §7): parse, match and format.

Syntax: comma-separated requirements, all of which must hold:
`k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (does not exist).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

KEY_RE = re.compile(
    r"^([a-z0-9A-Z]([-a-z0-9A-Z.]{0,251}[a-z0-9A-Z])?/)?[a-z0-9A-Z]([-a-z0-9A-Z_.]{0,61}[a-z0-9A-Z])?$"
)
VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
MAX_SELECTOR = 4096
_TOKEN = re.compile(r"\s*(!=|==|=|\(|\)|,|!|[^\s!=(),]+)")


class SelectorError(ValueError):
    """A selector string that does not parse; the message says where."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # NotIn: also true when the key is absent

    def __str__(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        if self.operator == "In" and len(self.values) == 1:
            return f"{self.key}={self.values[0]}"
        if self.operator == "NotIn" and len(self.values) == 1:
            return f"{self.key}!={self.values[0]}"
        op = "in" if self.operator == "In" else "notin"
        return f"{self.key} {op} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def match_labels(self) -> dict[str, str]:
        """The plain equalities (`k=v`), as Kubernetes' matchLabels."""
        return {r.key: r.values[0] for r in self.requirements if r.operator == "In" and len(r.values) == 1}

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        found = _TOKEN.match(text, pos)
        if not found:
            raise SelectorError(f"unexpected character at position {pos} in {text!r}")
        tokens.append(found.group(1))
        pos = found.end()
    return tokens


def _check_key(key: str, text: str) -> str:
    if not KEY_RE.match(key):
        raise SelectorError(f"invalid label key {key!r} in selector {text!r}")
    return key


def _check_value(value: str, text: str) -> str:
    if not VALUE_RE.match(value) or len(value) > 63:
        raise SelectorError(f"invalid label value {value!r} in selector {text!r}")
    return value


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> Selector:
    """Parse a selector string; an empty string selects everything (results are cached: immutable)."""
    if len(text) > MAX_SELECTOR:
        raise SelectorError(f"selector longer than {MAX_SELECTOR} characters")
    tokens = _tokens(text)
    requirements: list[Requirement] = []
    i = 0

    def expect(what: str) -> str:
        nonlocal i
        if i >= len(tokens):
            raise SelectorError(f"selector {text!r} ends early: expected {what}")
        token = tokens[i]
        i += 1
        return token

    while i < len(tokens):
        token = expect("a requirement")
        if token == "!":
            requirements.append(Requirement(_check_key(expect("a key after '!'"), text), "DoesNotExist"))
        elif token in ("=", "==", "!=", "(", ")", ","):
            raise SelectorError(f"unexpected {token!r} in selector {text!r}")
        else:
            key = _check_key(token, text)
            nxt = tokens[i] if i < len(tokens) else ","
            if nxt == ",":
                requirements.append(Requirement(key, "Exists"))
            elif nxt in ("=", "==", "!="):
                i += 1
                value = expect("a value") if i < len(tokens) and tokens[i] != "," else ""
                if value in ("(", ")", "=", "==", "!=", "!"):
                    raise SelectorError(f"unexpected {value!r} in selector {text!r}")
                value = _check_value(value, text)
                requirements.append(Requirement(key, "NotIn" if nxt == "!=" else "In", (value,)))
            elif nxt in ("in", "notin"):
                i += 1
                if expect("'('") != "(":
                    raise SelectorError(f"expected '(' after {nxt} in selector {text!r}")
                values: list[str] = []
                while True:
                    item = expect("a value or ')'")
                    if item == ")":
                        break
                    if item == ",":
                        continue
                    values.append(_check_value(item, text))
                if not values:
                    raise SelectorError(f"empty value list for {key!r} in selector {text!r}")
                requirements.append(Requirement(key, "In" if nxt == "in" else "NotIn", tuple(values)))
            else:
                raise SelectorError(f"unexpected {nxt!r} after {key!r} in selector {text!r}")
        if i < len(tokens):
            if tokens[i] != ",":
                raise SelectorError(f"expected ',' before {tokens[i]!r} in selector {text!r}")
            i += 1
            if i == len(tokens):
                raise SelectorError(f"selector {text!r} ends with ','")
    return Selector(tuple(requirements))


def from_labels(labels: dict[str, str]) -> Selector:
    return Selector(tuple(Requirement(k, "In", (v,)) for k, v in sorted(labels.items())))


class LabelIndex(Generic[K]):
    """Items by label, so a selector's candidates are an intersection of sets, not a scan of all."""

    def __init__(self) -> None:
        self.labels: dict[K, dict[str, str]] = {}
        self._by_pair: dict[tuple[str, str], set[K]] = {}
        self._by_key: dict[str, set[K]] = {}

    def add(self, item: K, labels: dict[str, str]) -> None:
        self.labels[item] = labels
        for key, value in labels.items():
            self._by_pair.setdefault((key, value), set()).add(item)
            self._by_key.setdefault(key, set()).add(item)

    def select(self, selector: Selector) -> set[K]:
        """Every item whose labels match `selector` (`matches` has the last word on each)."""
        narrowing: list[set[K]] = []
        for r in selector.requirements:
            if r.operator == "In":
                narrowing.append(set().union(*(self._by_pair.get((r.key, v), ()) for v in r.values)))
            elif r.operator == "Exists":
                narrowing.append(self._by_key.get(r.key, set()))
        if narrowing:  # NotIn and DoesNotExist cannot narrow: they hold for items without the key
            narrowing.sort(key=len)
            base: set[K] | dict[K, dict[str, str]] = narrowing[0].intersection(*narrowing[1:])
        else:
            base = self.labels
        return {item for item in base if selector.matches(self.labels[item])}
