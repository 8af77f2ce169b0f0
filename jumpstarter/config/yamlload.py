"""YAML loading that remembers where every key was, for `file:line: key: problem` errors."""

from __future__ import annotations

from typing import Any

import yaml

from jumpstarter.errors import ConfigError

MAX_CONFIG_BYTES = 4 * 1024 * 1024


class Located(dict):  # type: ignore[type-arg]
    """A mapping that knows the line of itself and of each of its keys."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Located:
    loader.flatten_mapping(node)
    mapping = Located()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, bool) and isinstance(key_node, yaml.ScalarNode):
            key = key_node.value  # `on:`/`off:`/`yes:` are names here, not YAML 1.1 booleans
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain values", key_node.start_mark
            )
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[str(key)] = key_node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str) -> Any:
    """Parse a YAML file; every mapping in the result is a `Located`."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB, refusing to parse")
    return loads(data.decode("utf-8", "replace"), path)


def loads(text: str, path: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError(f"{path}:{line}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {exc}") from None


class Where:
    """Builds `file:line: key.path: problem` messages while walking a document."""

    def __init__(self, path: str, keys: tuple[str, ...] = (), line: int = 0) -> None:
        self.path = path
        self.keys = keys
        self.line = line

    def child(self, mapping: Any, key: str) -> Where:
        line = mapping.line_of(key) if isinstance(mapping, Located) else self.line
        return Where(self.path, self.keys + (str(key),), line)

    def error(self, problem: str) -> ConfigError:
        where = ".".join(self.keys)
        return ConfigError(f"{self.path}:{self.line}: {where + ': ' if where else ''}{problem}")
