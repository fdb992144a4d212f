"""Plain-text pages of the config reference (``ldmkit COMMAND --help``, ``ldmkit configs [NAME]``), rendered from the
:class:`~ldmkit.configdoc.catalog.Catalog`. Standard library only (the CLI imports it for --help)."""

from __future__ import annotations

import shutil
import textwrap
from typing import TYPE_CHECKING

from ldmkit.configdoc.catalog import command_entries, command_name, defaults_text, group_keys, group_note

if TYPE_CHECKING:  # annotations only
    from ldmkit.configdoc.catalog import Catalog, ConfigFile, Entry


def _width() -> int:
    return max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)


def _rows(entries: list[Entry], indent: str, width: int) -> list[str]:
    """``key  default  description`` rows, the description wrapped under its own column."""
    if not entries:
        return [f"{indent}(no keys)"]
    key_w = max([len(e.key) for e in entries if len(e.key) <= 34] or [0])  # longer ones: description below
    val_w = max([len(e.default) for e in entries if len(e.default) <= 28] or [0])
    lines = []
    for e in entries:
        head = f"{indent}{e.key:<{key_w}}  {e.default:<{val_w}}"
        if not e.description:
            lines.append(head.rstrip())
            continue
        if len(head) > len(indent) + key_w + val_w + 2:  # an overlong key or value: description on the next line
            lines.append(head.rstrip())
            head = " " * (len(indent) + key_w + val_w + 2)
        pad = " " * (len(indent) + key_w + val_w + 4)
        wrapped = _wrap(e.description, max(30, width - len(pad))) or [""]
        lines.append(f"{head}  {wrapped[0]}")
        lines += [pad + w for w in wrapped[1:]]
    return lines


def _header_lines(cfg: ConfigFile, indent: str) -> list[str]:
    return [f"{indent}{line}".rstrip() for line in cfg.header]


def group_text(catalog: Catalog, group: str, width: int | None = None) -> list[str]:
    """A group: how to choose it, who uses it, then every option with its keys."""
    width = width or _width()
    used = ", ".join(f"{cmd} (default {opt})" for cmd, opt in catalog.used_by(group)) or "no command by default"
    lines = [f"{group}: {' | '.join(catalog.options(group))}",
             f"  choose with {group}=OPTION (conf/{group}/OPTION.yaml); used by: {used}"]
    for cfg in catalog.groups[group]:
        lines += ["", f"  {group}={cfg.name}  (conf/{cfg.path})", *_header_lines(cfg, "    ")]
        lines += [f"    defaults: {defaults_text(cfg)}"] if cfg.defaults else []
        lines += _rows(list(cfg.entries), "    ", width)
    return lines


def config_text(catalog: Catalog, cfg: ConfigFile, width: int | None = None) -> list[str]:
    """A single config file: its header, defaults and keys (hydra.* included)."""
    width = width or _width()
    where = f"{cfg.group}={cfg.name}" if cfg.group else cfg.name
    lines = [f"{where}  (conf/{cfg.path})", *_header_lines(cfg, "  ")]
    lines += [f"  defaults: {defaults_text(cfg)}"] if cfg.defaults else []
    return lines + _rows(list(cfg.entries), "  ", width)


def command_text(catalog: Catalog, config: str, width: int | None = None) -> list[str]:
    """A command's config: its groups (default and choices), its own keys, the shared configs' keys."""
    width = width or _width()
    cfg = catalog.configs[config]
    lines = [f"ldmkit {command_name(config)}  (conf/{cfg.path})", *_header_lines(cfg, "  "), "",
             "  config groups (GROUP=OPTION; the default first):"]
    groups = cfg.group_defaults()
    group_w = max([len(d.group) + len(d.option) + 1 for d in groups] or [0])
    for d in groups:
        pad = " " * (6 + group_w)
        choices = _wrap(" | ".join(catalog.options(d.group)), max(30, width - len(pad)))
        lines.append(f"    {d.group + '=' + d.option:<{group_w}}  {choices[0]}")
        lines += [pad + c for c in choices[1:]]
        lines += [pad + w for w in _wrap(group_note(d, catalog.options(d.group)), max(30, width - len(pad)))]
    if not groups:
        lines.append("    (none)")
    sections = command_entries(catalog, config, with_hydra=True)
    for name, entries in sections[:1]:
        lines += ["", f"  keys (conf/{catalog.configs[name].path}):", *_rows(entries, "    ", width)]
    for g in group_keys(catalog, config):
        rows = [*g.entries, *g.other_entries()]
        lines += ["", f"  keys of {g.choice.group}={g.choice.option} (conf/{g.source.path}):", *_rows(rows, "    ", width)]
    for name, entries in sections[1:]:
        lines += ["", f"  keys (conf/{catalog.configs[name].path}):", *_rows(entries, "    ", width)]
    return lines


def catalog_text(catalog: Catalog, name: str | None = None, width: int | None = None) -> str:
    """``ldmkit configs [NAME]``: everything, or one group, command, shared config or group option."""
    width = width or _width()
    if name is None:
        lines = ["Config groups (choose an option with group=OPTION, set a key with key=VALUE):", ""]
        lines += [f"  {g}: {' | '.join(catalog.options(g))}" for g in catalog.groups]
        lines += ["", "Commands: " + ", ".join(command_name(c) for c in catalog.commands()),
                  "Shared configs: " + ", ".join(catalog.shared())]
        for group in catalog.groups:
            lines += ["", "=" * min(width, 100), *group_text(catalog, group, width)]
        for config in catalog.commands():
            lines += ["", "=" * min(width, 100), *command_text(catalog, config, width)]
        for config in catalog.shared():
            lines += ["", "=" * min(width, 100), *config_text(catalog, catalog.configs[config], width)]
        return "\n".join(lines) + "\n"
    if name in catalog.groups:
        return "\n".join(group_text(catalog, name, width)) + "\n"
    if name.replace("-", "_") in catalog.commands():
        return "\n".join(command_text(catalog, name.replace("-", "_"), width)) + "\n"
    cfg = catalog.find(name)
    if cfg is None:
        raise KeyError(name)
    return "\n".join(config_text(catalog, cfg, width)) + "\n"
