"""YAML as the pipeline reads it: safe, duplicate keys refused, numbers as DVC reads them,
and the line of every key for error messages."""

from __future__ import annotations

import re

import yaml


def key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line of that key in a YAML text (mappings only)."""
    out: dict[str, int] = {}

    def walk(node, at: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{at}.{k.value}" if at else str(k.value)
                out[key] = k.start_mark.line + 1
                walk(v, key)

    walk(yaml.compose(text, Loader=yaml.SafeLoader), "")
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (as DVC does)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key] + 1}, again on line "
                    f"{key_node.start_mark.line + 1}); YAML would silently keep the last",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads `1e-4` as a string; YAML 1.2 (DVC's ruamel) as a float.
# Read it as DVC does, so a strict float field takes it.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str):
    """YAML as the pipeline reads it: safe, and a duplicate key is an error."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
