"""Reading config text strictly: the one parser the CLI, uploads and lora_core.checks use (through config).

YAML aliases (the "billion laughs" expansion) and duplicate keys are refused, as are empty files, files over
`MAX_CONFIG_BYTES` and bytes that are not UTF-8 (the error names the file and the line). `excerpt` keeps a bad
value's quote short in every config error.
"""
from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20   # a config is a page of settings; anything near this size is not one

_SHORT = reprlib.Repr()  # Python 3.11's Repr takes no arguments
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 2, 60, 40, 60
_SHORT.maxtuple = _SHORT.maxlist = _SHORT.maxarray = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 4


def excerpt(value: Any, limit: int = 80) -> str:
    """A short repr of a value for an error message: a bad value quoted in full could be megabytes (a YAML alias
    bomb, a pasted file). Never walks more than a few items of a big structure."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- strict parsing: no aliases, no duplicate keys ---------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and duplicate keys. An alias lets a few hundred bytes expand into
    gigabytes (each level repeats the previous one); a config never needs one, so we refuse rather than bound."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError("", f"line {mark.line + 1}: YAML aliases (*name) are not allowed in a config; "
                                  "write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges are resolved by SafeLoader itself
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key (a list or a mapping)
                raise ConfigError("", f"line {line}: a key must be a name, got {excerpt(key)}") from None
            if duplicate:
                raise ConfigError("", f"line {line}: duplicate key {excerpt(key)} (first at line {seen[key]}); "
                                      "a config says each setting once")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _no_duplicates(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError("", f"duplicate key {excerpt(key)}; a config says each setting once")
        out[key] = value
    return out


def _load_json(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicates)


# -- reading config files: the one strict parser (the CLI, uploads and lora_core.checks use it) -------------------

def parse_file(path: str | Path) -> dict:
    """The settings in a YAML / JSON config file, read as parse_bytes reads them."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError("", f"config file not found: {excerpt(str(path))}")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError("", f"{path}: {path.stat().st_size:,} bytes is too big for a config "
                                  f"(at most {MAX_CONFIG_BYTES:,})")
        raw = path.read_bytes()
    except OSError as exc:  # a name too long, a folder, no permission: say which file
        raise ConfigError("", f"cannot read the config file {excerpt(str(path))}: {exc.strerror or exc}") from None
    return parse_bytes(raw, fmt="json" if path.suffix.lower() == ".json" else "yaml", source=str(path))


def parse_bytes(raw: bytes, fmt: str = "yaml", source: str = "config") -> dict:
    """The settings in a file's bytes: checked for size and UTF-8, then parse_text."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"{source}: {len(raw):,} bytes is too big for a config (at most "
                              f"{MAX_CONFIG_BYTES:,})")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError("", f"{source}: line {line} (byte {exc.start}) is not valid UTF-8 "
                              f"({raw[exc.start:exc.start + 4]!r}); save the file as UTF-8") from None
    return parse_text(text, fmt, source)


def parse_text(text: str, fmt: str = "yaml", source: str = "config") -> dict:
    """The settings in YAML or JSON text. Empty text, aliases, duplicate keys and non-finite numbers are refused:
    a config that does not say what it means never launches the defaults or the last of two values. A parse
    error keeps the parser's own lines (where, with its caret, and what)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"{source}: too big for a config (at most {MAX_CONFIG_BYTES:,} characters)")
    if not text.strip():
        raise ConfigError("", f"{source} is empty; a config needs at least one setting (an empty file would "
                              "silently launch the defaults)")
    try:
        data = _load_json(text) if fmt == "json" else yaml.load(text, Loader=_StrictLoader)  # noqa: S506
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{source}: {exc.message}") from None
    except RecursionError:
        raise ConfigError("", f"{source} is nested too deeply to be a config") from None
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: say where, in the parser's own lines
        raise ConfigError("", f"{source} is not valid {fmt.upper()}:\n{str(exc)[:1500]}") from None
    if data is None:
        raise ConfigError("", f"{source} has no settings (only comments or an empty document)")
    if not isinstance(data, dict):
        raise ConfigError("", f"{source} must be a mapping of keys to values, got {type(data).__name__}")
    return data
