"""Markdown pages of the config reference (``docs/config/<group>.md``, ``docs/config/commands/<command>.md``),
rendered from the :class:`~ldmkit.configdoc.catalog.Catalog`; ``python -m ldmkit.configdoc DOCS`` writes them."""

from __future__ import annotations

import re
from pathlib import Path

from ldmkit.configdoc.catalog import (
    Catalog,
    ConfigFile,
    Entry,
    command_entries,
    command_name,
    defaults_text,
    group_keys,
    group_note,
    load_catalog,
)
from ldmkit.configdoc.yaml_comments import ConfigDocError

DOCS_SUBDIR = "config"  # python -m ldmkit.configdoc DOCS writes DOCS/config/
COMMANDS_SUBDIR = "commands"  # ... and DOCS/config/commands/<command>.md
GENERATED = ("<!-- Generated from conf/ by `python -m ldmkit.configdoc docs/`: "
             "edit the YAML comments, not this page. -->")


def _cell(text: str) -> str:
    """Table-cell text: pipes escaped, so descriptions such as ``center | random`` stay in their cell."""
    return text.replace("|", "\\|")


def _prose(text: str) -> str:
    """A comment as Markdown text: ``<out>`` is not an HTML tag, ``2*steps`` no emphasis (`code` stays code)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans
        parts = [text]
    return "`".join(p if i % 2 else p.replace("\\", "\\\\").replace("*", "\\*").replace("<", "&lt;")
                    for i, p in enumerate(parts))


def _code(text: str) -> str:
    if not text:
        return ""
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return _cell(f"{fence}{pad}{text}{pad}{fence}")


def _key_table(entries: list[Entry]) -> list[str]:
    lines = ["| Key | Default | Description |", "|---|---|---|"]
    return lines + [f"| {_code(e.key)} | {_code(e.default)} | {_cell(_prose(e.description))} |" for e in entries]


def _header_md(cfg: ConfigFile) -> list[str]:
    """The file's leading comment: prose joined into a paragraph, indented example lines as a code block."""
    out: list[str] = []
    prose: list[str] = []
    code: list[str] = []
    for line in [*cfg.header, ""]:
        if line.startswith("  ") and line.strip():
            if prose:
                out, prose = [*out, " ".join(prose), ""], []
            code.append(line.strip())
            continue
        if code:
            out, code = [*out, "```", *code, "```", ""], []
        if line.strip():
            prose.append(_prose(line.strip()))
    if prose:
        out += [" ".join(prose), ""]
    return out


def _defaults_md(cfg: ConfigFile) -> list[str]:
    if not cfg.defaults:
        return []
    return [f"Defaults list: {', '.join(_code(x) for x in defaults_text(cfg).split(', '))}.", ""]


def group_markdown(catalog: Catalog, group: str) -> str:
    """``docs/config/<group>.md``."""
    used = catalog.used_by(group)
    lines = [f"# Config group `{group}`", "", GENERATED, "",
             f"Choose an option with `{group}=OPTION` (files `conf/{group}/OPTION.yaml`); set one of its keys with "
             "`KEY=VALUE`.", "",
             "Used by: " + (", ".join(f"[`{c}`]({COMMANDS_SUBDIR}/{c}.md) (default `{o}`)" for c, o in used)
                            if used else "no command by default (add it with `+" + group + "=OPTION`)") + ".", "",
             "| Option | Description |", "|---|---|"]
    lines += [f"| [`{c.name}`](#{_anchor(group, c.name)}) | {_cell(_prose(c.summary))} |"
              for c in catalog.groups[group]]
    for cfg in catalog.groups[group]:
        lines += ["", f"## `{group}={cfg.name}`", "", f"`conf/{cfg.path}`", "", *_header_md(cfg), *_defaults_md(cfg)]
        lines += _key_table(list(cfg.entries)) if cfg.entries else ["No keys of its own."]
    return "\n".join(lines) + "\n"


def _anchor(group: str, option: str) -> str:
    """GitHub's heading anchor of ``## `group=option` ``: lower-case, punctuation but - and _ dropped."""
    return re.sub(r"[^\w\- ]", "", f"{group}={option}".lower()).replace(" ", "-")


def command_markdown(catalog: Catalog, config: str) -> str:
    """``docs/config/commands/<command>.md``."""
    cfg = catalog.configs[config]
    cmd = command_name(config)
    lines = [f"# `ldmkit {cmd}` config", "", GENERATED, "", f"`conf/{cfg.path}`", "", *_header_md(cfg),
             f"Override any key with `ldmkit {cmd} KEY=VALUE`, choose a group option with `GROUP=OPTION`; "
             f"`ldmkit {cmd} --cfg job` prints the composed config.", "", "## Config groups", ""]
    groups = cfg.group_defaults()
    if groups:
        lines += ["| Group | Default | Choices | Description |", "|---|---|---|---|"]
        for d in groups:
            choices = ", ".join(f"[`{o}`](../{d.group}.md#{_anchor(d.group, o)})" for o in catalog.options(d.group))
            lines.append(f"| [`{d.group}`](../{d.group}.md) | `{d.option}` | {choices} | "
                         f"{_cell(_prose(group_note(d, catalog.options(d.group))))} |")
    else:
        lines.append("None.")
    sections = command_entries(catalog, config, with_hydra=True)
    for name, entries in sections:
        title = "Keys" if name == config else f"Keys from `conf/{catalog.configs[name].path}`"
        lines += ["", f"## {title}", "", *_key_table(entries)]
        if name == config:
            lines += _group_keys_md(catalog, config)
    return "\n".join(lines) + "\n"


def _group_keys_md(catalog: Catalog, config: str) -> list[str]:
    """The keys of the command's default group options, one table per group (the other options: the group page)."""
    lines = []
    for g in group_keys(catalog, config):
        group, option = g.choice.group, g.choice.option
        lines += ["", f"## Keys of `{group}={option}`", "",
                  f"`conf/{g.source.path}`, the default; the other options and their keys: [{group}](../{group}.md).",
                  ""]
        lines += _key_table(list(g.entries)) if g.entries else ["No keys of its own."]
    return lines


def index_markdown(catalog: Catalog) -> str:
    """``docs/config/README.md``: the groups and the commands, linked."""
    lines = ["# Config reference", "", GENERATED, "",
             "Every `ldmkit` command is configured by Hydra from `conf/`: a command's own config "
             "(`conf/<command>.yaml`) chooses one option of each of its config groups (`conf/<group>/<option>.yaml`) "
             "and includes shared configs (" + ", ".join(f"`{s}.yaml`" for s in catalog.shared()) + "). The same "
             "reference is printed by `ldmkit configs [GROUP|COMMAND]` and, per command, by `ldmkit COMMAND --help`.",
             "", "## Config groups", "", "| Group | Options | Used by |", "|---|---|---|"]
    for group in catalog.groups:
        used = ", ".join(f"`{c}` ({o})" for c, o in catalog.used_by(group))
        lines.append(f"| [`{group}`]({group}.md) | {', '.join(f'`{o}`' for o in catalog.options(group))} | {used} |")
    lines += ["", "## Commands", "", "| Command | Config |", "|---|---|"]
    for config in catalog.commands():
        lines.append(f"| [`ldmkit {command_name(config)}`]({COMMANDS_SUBDIR}/{command_name(config)}.md) | "
                     f"{_cell(_prose(catalog.configs[config].summary))} |")
    return "\n".join(lines) + "\n"


def markdown_pages(catalog: Catalog) -> dict[str, str]:
    """Every page, by path relative to the docs folder: config/README.md, config/<group>.md,
    config/commands/<command>.md."""
    pages = {f"{DOCS_SUBDIR}/README.md": index_markdown(catalog)}
    clash = set(catalog.groups) & {COMMANDS_SUBDIR, "README"}
    if clash:
        raise ConfigDocError(f"a config group may not be named {sorted(clash)} (docs/config/ uses the name)")
    pages.update({f"{DOCS_SUBDIR}/{g}.md": group_markdown(catalog, g) for g in catalog.groups})
    pages.update({f"{DOCS_SUBDIR}/{COMMANDS_SUBDIR}/{command_name(c)}.md": command_markdown(catalog, c)
                  for c in catalog.commands()})
    return pages


def write_docs(docs: Path, catalog: Catalog | None = None) -> list[Path]:
    """Write the pages under ``docs`` (each atomically) and remove generated pages whose config is gone."""
    from ldmkit.atomic import write_text

    pages = markdown_pages(catalog or load_catalog())
    written = []
    for rel, text in pages.items():
        path = docs / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_text(path, text)
        written.append(path)
    for folder in (docs / DOCS_SUBDIR, docs / DOCS_SUBDIR / COMMANDS_SUBDIR):
        for stale in folder.glob("*.md"):
            if stale.relative_to(docs).as_posix() not in pages and GENERATED in stale.read_text(encoding="utf-8"):
                stale.unlink()
    return written
