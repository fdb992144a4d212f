"""The config reference, generated from ``conf/``: every group, option and key with its default and description.

A key's description is its YAML end-of-line ``# comment`` (plus comment-only lines right below it, indented past
the key); a file's leading comment describes the file. PyYAML drops comments, so :func:`parse_yaml` reads our
simple YAML line by line: nested mappings by indentation, ``key: value  # comment``, block lists (the Hydra
``defaults:`` list) and one-line flow values. Anything else stops with the file and line, never a wrong page.

Used by ``ldmkit COMMAND --help``, ``ldmkit configs [NAME]`` and ``python -m ldmkit.configdoc docs/`` (the Markdown
pages ``docs/config/<group>.md`` and ``docs/config/commands/<command>.md``). Standard library only: the CLI imports
it for ``--help`` without paying for torch or Hydra.
"""

from __future__ import annotations

import re
import shutil
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

DOCS_SUBDIR = "config"  # python -m ldmkit.configdoc DOCS writes DOCS/config/
COMMANDS_SUBDIR = "commands"  # ... and DOCS/config/commands/<command>.md
GENERATED = ("<!-- Generated from conf/ by `python -m ldmkit.configdoc docs/`: "
             "edit the YAML comments, not this page. -->")


class ConfigDocError(ValueError):
    """A conf file uses YAML this reader does not understand (names the file and line)."""


@dataclass(frozen=True)
class Entry:
    """One key of one config file, as a user sets it on the command line."""

    group: str  # the config group ("" for a command's config or a shared config such as common.yaml)
    option: str  # the option within the group, or the config's name (train_ldm, common)
    key: str  # dotted key in the composed config: dataset.path, trainer.max_steps, cond.drop_prob
    default: str  # the value as written in the YAML ("" for a mapping)
    description: str  # the key's comment ("" when it has none)
    mapping: bool = False  # a node holding further keys (they follow as their own entries)


@dataclass(frozen=True)
class DefaultItem:
    """One item of a Hydra ``defaults:`` list."""

    group: str  # the config group ("" for a plain config: common, _self_)
    option: str  # the chosen option ("null": none), or the plain config's name
    override: bool  # an ``override /group: option`` item
    description: str


@dataclass(frozen=True)
class ConfigFile:
    """A parsed conf file: its description, defaults list and keys."""

    group: str  # "" for a top-level config (conf/<name>.yaml)
    name: str  # option or config name (the file stem)
    path: str  # relative to conf/: dataset/folder.yaml
    header: tuple[str, ...]  # the leading comment, line by line (without ``# @package``)
    defaults: tuple[DefaultItem, ...]
    entries: tuple[Entry, ...]

    @property
    def summary(self) -> str:
        """The first sentence of the header's first paragraph."""
        prose = []
        for line in self.header:
            if not line.strip() or line.startswith("  "):
                break
            prose.append(line.strip())
        return first_sentence(" ".join(prose))

    def group_defaults(self) -> list[DefaultItem]:
        """The config groups this file chooses options of (Hydra's own groups left out)."""
        return [d for d in self.defaults if d.group and not d.override and not d.group.startswith("hydra")]


_ABBREVIATIONS = {"al", "alg", "app", "cf", "e.g", "eq", "fig", "i.e", "sec", "tab", "vs"}


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (not Sec. / Eq. / et al.)."""
    for match in re.finditer(r"\.\s+(?=[A-Z(])", text):
        word = text[: match.start()].rsplit(None, 1)[-1].lstrip("(").lower()
        if word not in _ABBREVIATIONS:
            return text[: match.start() + 1]
    return text


@dataclass
class _Node:
    """A key while parsing: its value, comment parts, and what follows it."""

    key: str
    indent: int
    value: str
    comment: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    children: bool = False


@dataclass
class _Parsed:
    header: list[str] = field(default_factory=list)
    package: str | None = None
    defaults: list[tuple[str, list[str]]] = field(default_factory=list)  # (item text, comment parts)
    nodes: list[_Node] = field(default_factory=list)


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[\w$@./-]+):(?:[ \t]+(?P<value>.*?))?\s*$")
_PACKAGE = re.compile(r"^@package\s+(\S+)")
_DEFAULT = re.compile(r"^(?:(?P<kw>override|optional)\s+)?(?P<name>[^:\s]+)\s*(?::\s*(?P<option>.*))?$")


def split_comment(line: str) -> tuple[str, str | None, int]:
    """``(code, comment, column of '#')`` of one line; ``#`` inside a quoted scalar is not a comment."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
            continue
        before = line[:i].rstrip()
        if ch in "'\"" and (not before or before[-1] in ":-[{,"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1 :].strip(), i
    return line.rstrip(), None, -1


def _balanced(text: str) -> bool:
    """Whether the brackets of a flow value are closed (quotes not considered: our flow values hold none)."""
    return text.count("[") + text.count("{") == text.count("]") + text.count("}")


def parse_yaml(text: str, source: str = "<yaml>") -> _Parsed:
    """Read our YAML keeping comments: header, ``# @package``, defaults list, and every key in file order."""
    out = _Parsed()
    stack: list[_Node] = []
    in_header, lead = True, []
    target: list[str] | None = None  # comment parts a deeper comment-only line continues
    target_indent = 0
    flow: _Node | None = None  # a flow value spread over several lines
    for lineno, line in enumerate(text.splitlines(), 1):
        code, comment, col = split_comment(line)
        if flow is not None:
            flow.value += " " + code.strip()
            flow = None if _balanced(flow.value) else flow
            continue
        if not code.strip():
            if comment is None:  # blank line: ends the header and any continuation
                in_header, target, lead = False, None, []
            elif in_header:
                package = _PACKAGE.match(comment)
                if package:
                    out.package = package[1]
                else:
                    out.header.append(line.strip()[1:].removeprefix(" ").rstrip())
            elif target is not None and col > target_indent:
                target.append(comment)
            else:
                lead, target = [*lead, comment], None
            continue
        in_header = False
        indent = len(code) - len(code.lstrip(" "))
        stripped = code.strip()
        if stripped == "-" or stripped.startswith("- "):
            while stack and stack[-1].indent > indent:
                stack.pop()
            parent = stack[-1] if stack else None
            if parent is None or parent.value or parent.children:
                raise ConfigDocError(f"{source}:{lineno}: a list item outside a list")
            item = stripped[1:].strip()
            if parent.key == "defaults" and parent.indent == 0:
                parts = [comment] if comment else []
                out.defaults.append((item, parts))
                target, target_indent = (parts, indent) if comment else (None, 0)
            elif _KEY.match(item) or item.startswith(("- ", "|", ">")):
                raise ConfigDocError(f"{source}:{lineno}: nested block lists/mappings in a list are not supported")
            else:
                parent.items.append(item)
                target = None
            continue
        match = _KEY.match(code)
        if match is None:
            if stripped == "{}" and not stack and not out.nodes:
                continue  # an empty mapping as the whole document
            raise ConfigDocError(f"{source}:{lineno}: cannot read {stripped!r} (expected key: value)")
        while stack and stack[-1].indent >= indent:
            stack.pop()
        value = match["value"] or ""
        if value and value[0] in "|>&*!":
            raise ConfigDocError(f"{source}:{lineno}: block scalars, anchors and tags are not supported")
        if stack:
            stack[-1].children = True
        dotted = f"{stack[-1].key}.{match['key']}" if stack else match["key"]
        node = _Node(dotted, indent, value, [comment] if comment else list(lead))
        lead = []
        target, target_indent = (node.comment, indent) if comment else (None, 0)
        if value and value[0] in "[{" and not _balanced(value):
            flow = node
        if dotted != "defaults":
            out.nodes.append(node)
        stack.append(node)
    if flow is not None:
        raise ConfigDocError(f"{source}: unclosed flow value of {flow.key}")
    return out


def _node_value(node: _Node) -> tuple[str, bool]:
    """``(default as written, is a mapping)``: a block list shows as a flow list, an empty value as null."""
    if node.value:
        return node.value, False
    if node.items:
        return "[" + ", ".join(node.items) + "]", False
    return ("", True) if node.children else ("null", False)


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text


def _default_item(text: str, comment: list[str], source: str) -> DefaultItem:
    match = _DEFAULT.match(text)
    if match is None:
        raise ConfigDocError(f"{source}: cannot read the defaults item {text!r}")
    description = " ".join(comment)
    if match["option"] is None:
        return DefaultItem("", _unquote(match["name"]), match["kw"] == "override", description)
    group = match["name"].lstrip("/").split("@")[0]
    return DefaultItem(group, _unquote(match["option"]) or "null", match["kw"] == "override", description)


def read_config(conf: Path, path: Path) -> ConfigFile:
    """Parse ``conf/<group>/<option>.yaml`` (or a top-level ``conf/<name>.yaml``) into a :class:`ConfigFile`."""
    rel = path.relative_to(conf).as_posix()
    group = path.parent.relative_to(conf).as_posix() if path.parent != conf else ""
    parsed = parse_yaml(path.read_text(encoding="utf-8"), f"conf/{rel}")
    package = parsed.package or ("_group_" if group else "_global_")
    prefix = {"_global_": "", "_group_": group.replace("/", ".")}.get(package, package)
    entries = []
    for node in parsed.nodes:
        default, mapping = _node_value(node)
        description = " ".join(node.comment)
        key = f"{prefix}.{node.key}" if prefix else node.key
        entries.append(Entry(group, path.stem, key, default, description, mapping))
    defaults = tuple(_default_item(text, comment, f"conf/{rel}") for text, comment in parsed.defaults)
    return ConfigFile(group, path.stem, rel, tuple(parsed.header), defaults, tuple(entries))


def option_order(name: str) -> tuple[str | int, ...]:
    """Options in reading order, numbers by value: f=1, 2, 4 … 32; kl_f4, kl_f8, kl_f16."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))


@dataclass(frozen=True)
class Catalog:
    """Every conf file: the config groups with their options, and the top-level configs."""

    groups: dict[str, tuple[ConfigFile, ...]]  # group -> its options in reading order
    configs: dict[str, ConfigFile]  # top-level configs by name (train_ldm, common, ...)

    def shared(self) -> list[str]:
        """Top-level configs that others list in their defaults (common, resume, images)."""
        used = {d.option for c in self.configs.values() for d in c.defaults if not d.group}
        return sorted(name for name in self.configs if name in used)

    def commands(self) -> list[str]:
        """Top-level configs of a command (train_ldm): the ones no other config includes."""
        return sorted(name for name in self.configs if name not in self.shared())

    def options(self, group: str) -> list[str]:
        return [c.name for c in self.groups.get(group, ())]

    def used_by(self, group: str) -> list[tuple[str, str]]:
        """``(command, default option)`` of every command choosing from ``group``."""
        return [(command_name(name), d.option) for name in self.commands()
                for d in self.configs[name].group_defaults() if d.group == group]

    def find(self, name: str) -> ConfigFile | None:
        """A top-level config by name (train-ldm or train_ldm), or a group option as group/option or group=option."""
        group, sep, option = name.replace("=", "/").rpartition("/")
        if sep:
            return next((c for c in self.groups.get(group, ()) if c.name == option), None)
        return self.configs.get(name.replace("-", "_"))


def default_conf() -> Path:
    """The shipped ``conf/`` folder."""
    from ldmkit.runner import conf_dir

    return Path(conf_dir())


def load_catalog(conf: Path | None = None) -> Catalog:
    """Parse every ``*.yaml`` under ``conf``."""
    conf = conf or default_conf()
    groups: dict[str, list[ConfigFile]] = {}
    configs: dict[str, ConfigFile] = {}
    for path in sorted(conf.rglob("*.yaml")):
        cfg = read_config(conf, path)
        if cfg.group:
            groups.setdefault(cfg.group, []).append(cfg)
        else:
            configs[cfg.name] = cfg
    ordered = {g: tuple(sorted(groups[g], key=lambda c: option_order(c.name))) for g in sorted(groups)}
    return Catalog(ordered, configs)


def command_name(config: str) -> str:
    """The CLI command of a top-level config: train_ldm -> train-ldm."""
    return config.replace("_", "-")


def command_entries(catalog: Catalog, config: str, with_hydra: bool = False) -> list[tuple[str, list[Entry]]]:
    """``(source, entries)`` of a command's own config, then of each shared config it includes (common, ...)."""
    cfg = catalog.configs[config]
    sources = [cfg] + [catalog.configs[d.option] for d in cfg.defaults
                       if not d.group and d.option in catalog.configs and d.option != config]
    keep = [(c.name, [e for e in c.entries if with_hydra or not (e.key == "hydra" or e.key.startswith("hydra."))])
            for c in sources]
    return [(name, entries) for name, entries in keep if entries]


def override_completions(catalog: Catalog, config: str) -> list[tuple[str, str]]:
    """``(word, help)`` for shell completion of a command's overrides: ``group=option`` of its groups, ``key=`` of
    its own and shared keys and of its groups' default options (hydra.* left out)."""
    cfg = catalog.configs.get(config)
    if cfg is None:
        return []
    words = []
    entries = [e for _, found in command_entries(catalog, config) for e in found]
    for d in cfg.group_defaults():
        words += [(f"{d.group}={c.name}", c.summary) for c in catalog.groups.get(d.group, ())]
        entries += next((c.entries for c in catalog.groups.get(d.group, ()) if c.name == d.option), ())
    words += [(f"{e.key}=", e.description) for e in entries if not e.mapping and not e.key.endswith("_")]
    return list(dict.fromkeys(words))


# ---------------------------------------------------------------------------------------------- plain text


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
        lines += [f"    defaults: {_defaults_text(cfg)}"] if cfg.defaults else []
        lines += _rows(list(cfg.entries), "    ", width)
    return lines


def _defaults_text(cfg: ConfigFile) -> str:
    items = []
    for d in cfg.defaults:
        if not d.group:
            items.append(d.option if d.option == "_self_" or not cfg.group else f"{cfg.group}/{d.option}")
        else:
            items.append(f"{'override ' if d.override else ''}{d.group}={d.option}")
    return ", ".join(items)


def config_text(catalog: Catalog, cfg: ConfigFile, width: int | None = None) -> list[str]:
    """A single config file: its header, defaults and keys (hydra.* included)."""
    width = width or _width()
    where = f"{cfg.group}={cfg.name}" if cfg.group else cfg.name
    lines = [f"{where}  (conf/{cfg.path})", *_header_lines(cfg, "  ")]
    lines += [f"  defaults: {_defaults_text(cfg)}"] if cfg.defaults else []
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
        lines += [pad + w for w in _wrap(d.description, max(30, width - len(pad)))]
    if not groups:
        lines.append("    (none)")
    for name, entries in command_entries(catalog, config, with_hydra=True):
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


def known_names(catalog: Catalog) -> list[str]:
    """What ``ldmkit configs NAME`` accepts (besides group/option)."""
    return [*catalog.groups, *(command_name(c) for c in catalog.commands()), *catalog.shared()]


# ---------------------------------------------------------------------------------------------- Markdown


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
    return [f"Defaults list: {', '.join(_code(x) for x in _defaults_text(cfg).split(', '))}.", ""]


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
                         f"{_cell(_prose(d.description))} |")
    else:
        lines.append("None.")
    for name, entries in command_entries(catalog, config, with_hydra=True):
        title = "Keys" if name == config else f"Keys from `conf/{catalog.configs[name].path}`"
        lines += ["", f"## {title}", "", *_key_table(entries)]
    return "\n".join(lines) + "\n"


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


def main(argv: list[str] | None = None) -> int:
    """``python -m ldmkit.configdoc DOCS``: (re)generate DOCS/config/ from conf/."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m ldmkit.configdoc DOCS_DIR  (writes DOCS_DIR/config/*.md from conf/)", file=sys.stderr)
        return 2
    try:
        paths = write_docs(Path(args[0]))
    except ConfigDocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(paths)} pages in {Path(args[0]) / DOCS_SUBDIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
