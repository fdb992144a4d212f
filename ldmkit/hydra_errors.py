"""One line for each error Hydra raises while parsing overrides or composing a config."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from ldmkit.cli_args import TEXT_KEYS


def _one_line(text: str) -> str:
    """A multi-line Hydra message as one line (without the config search path and the stack-trace hint)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("Config search path:"):
            break
        if line.strip() and not line.startswith("Set the environment variable"):
            lines.append(line.strip())
    return " ".join(lines)


def _sorted_options(options: list[str]) -> list[str]:
    """Group options in reading order: numbers by value (f=1, 2, 4 … 32), then names alphabetically."""
    return sorted(options, key=lambda o: (not o.isdigit(), int(o) if o.isdigit() else 0, o))


def _group_options(group: str) -> list[str]:
    """The option names of a shipped config group (its YAML files)."""
    from ldmkit.runner import conf_dir

    folder = Path(conf_dir()) / group
    return [p.stem for p in folder.glob("*.yaml")] if folder.is_dir() else []


def _unknown_group_option(missing: str, options: list[str] | None) -> str:
    """``sampler=nope``: name the group's valid options (and the closest one)."""
    group, _, name = missing.rpartition("/")
    options = _sorted_options(list(options or _group_options(group)))
    if not options:
        return f"{group}={name}: no such config ({group}/{name}.yaml not found)"
    near = [] if name.isdigit() else difflib.get_close_matches(name, options, n=2, cutoff=0.6)
    hint = f" (did you mean {' or '.join(f'{group}={o}' for o in near)}?)" if near else ""
    return f"{group}={name} is not an option{hint}. Available options in '{group}': {', '.join(options)}"


def _config_paths(node: object, prefix: str = "") -> list[str]:
    """Every dotted key of a plain (to_container) config."""
    if not isinstance(node, dict):
        return []
    paths = []
    for key, value in node.items():
        paths += [f"{prefix}{key}", *_config_paths(value, f"{prefix}{key}.")]
    return paths


def _unknown_key(cause: Exception, message: str) -> str:
    """``trainer.max_stepz=3``: close matches anywhere in the config, the keys at that level, and ``+key=``."""
    from omegaconf import DictConfig, OmegaConf

    full_key, parent = str(cause.full_key), cause.parent_node
    where, _, leaf = full_key.rpartition(".")
    siblings = [str(k) for k in parent.keys() if not str(k).startswith("_")] if isinstance(parent, DictConfig) else []
    if not where:
        siblings = [k for k in siblings if k != "hydra"]
    root = OmegaConf.to_container(parent._get_root(), resolve=False) if isinstance(parent, DictConfig) else {}
    if not full_key.startswith("hydra."):
        root = {k: v for k, v in root.items() if k != "hydra"}
    paths = [p for p in _config_paths(root) if p != full_key]
    near = [p for p in paths if p.rpartition(".")[2] == leaf]
    near += [f"{where}.{k}" if where else k for k in difflib.get_close_matches(leaf, siblings, n=2, cutoff=0.6)]
    elsewhere = [p for p in paths if p.rpartition(".")[0] != where and not full_key.startswith(p + ".")]
    near += difflib.get_close_matches(full_key, elsewhere, n=2, cutoff=0.75)
    near = list(dict.fromkeys(near))[:3]
    parts = [f"{full_key} is not an option" + (f" (did you mean {' or '.join(near)}?)" if near else "")]
    if siblings:
        parts.append(f"the options {f'under {where}' if where else 'at the top level'} are: {', '.join(siblings)}")
    add = re.search(r"use (\+\S+)", message)
    if add:
        parts.append(f"use {add[1]} to add a new key")
    return "; ".join(parts)


def hydra_error_line(exc: Exception) -> str:
    """One informative line for an error Hydra raised while parsing the overrides or composing the config."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, MissingConfigException) and "/" in str(exc.missing_cfg_file or ""):
        return _unknown_group_option(str(exc.missing_cfg_file), exc.options)
    if isinstance(exc, OverrideParseException):
        key = str(exc.override).partition("=")[0].lstrip("+")
        hint = (f"a list is {key}=[a,b]; one text starting with '[': --{key.replace('_', '-')} TEXT"
                if key in TEXT_KEYS else "quote a value holding special characters: key='a b,c'")
        return f"cannot parse the override {exc.override!r}: {_one_line(exc.message).split(' See ')[0]} ({hint})"
    cause = exc.__cause__
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and getattr(cause, "full_key", None):
        return _unknown_key(cause, str(exc))
    return _one_line(str(exc)) or type(exc).__name__
