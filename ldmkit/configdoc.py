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
import sys
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class GroupKeys:
    """The keys one config group of a command brings: its default option's, and the ones only other options have."""

    choice: DefaultItem  # the command's defaults item (group and default option)
    source: ConfigFile  # the default option's file
    others: tuple[tuple[Entry, tuple[str, ...]], ...]  # (a key only other options have, those options)

    @property
    def entries(self) -> tuple[Entry, ...]:
        """The default option's keys."""
        return self.source.entries

    def other_entries(self, limit: int = 6) -> list[Entry]:
        """The keys only other options have, as rows naming those options (one row saying how many, past
        ``limit``)."""
        group = self.choice.group
        if len(self.others) > limit:
            return [Entry(group, "", f"{group}.*", "",
                          f"{len(self.others)} more keys in the other options: ldmkit configs {group}")]
        return [replace(e, default="", description=f"({_which(group, names)}) {e.description}".rstrip())
                for e, names in self.others]


def _which(group: str, names: tuple[str, ...]) -> str:
    """The options a key belongs to: ``sampler=euler | heun``, or how many when they are many."""
    return f"{group}={' | '.join(names)}" if len(names) <= 4 else f"{len(names)} other {group} options"


def group_keys(catalog: Catalog, config: str) -> list[GroupKeys]:
    """Per config group of a command with a default option: that option's keys and the keys of its other options."""
    found = []
    for d in catalog.configs[config].group_defaults():
        options = catalog.groups.get(d.group, ())
        source = next((c for c in options if c.name == d.option), None)
        if source is None:
            continue
        own = {e.key for e in source.entries}
        others: dict[str, tuple[Entry, list[str]]] = {}
        for option in options:
            for e in option.entries:
                if e.key not in own and not e.key.rpartition(".")[2].startswith("_"):
                    others.setdefault(e.key, (e, []))[1].append(option.name)
        found.append(GroupKeys(d, source, tuple((e, tuple(names)) for e, names in others.values())))
    return found


def group_note(choice: DefaultItem, options: list[str]) -> str:
    """A defaults item's comment without the list of the group's options it may start with (``csv | tensorboard
    (adds ...)``, ``f=1|2|4 sets ...``): help and docs show the choices in a column of their own."""
    text = choice.description
    match = re.match(rf"(?:{re.escape(choice.group)}=)?([\w.-]+(?:\s*\|\s*[\w.-]+)+)\s*:?\s*", text)
    if match is None or not set(re.split(r"\s*\|\s*", match[1])) <= {*options, "null"}:
        return text
    rest = text[match.end():]
    if rest.startswith("(") and rest.endswith(")") and rest.count("(") == 1:
        rest = rest[1:-1]
    return rest


# Flags people type by habit -> the keys they usually mean (tried in order, before the flag's own name).
FLAG_SYNONYMS = {
    "steps": ("sampler.steps", "trainer.max_steps"), "lr": ("optim.lr",), "learning_rate": ("optim.lr",),
    "bs": ("batch_size", "loader.batch_size"), "batch_size": ("batch_size", "loader.batch_size"),
    "o": ("out",), "output": ("out",), "output_dir": ("out",), "outdir": ("out",), "n": ("samples", "n"),
    "num_samples": ("samples", "n"), "scale": ("guidance",), "cfg_scale": ("guidance",),
    "guidance_scale": ("guidance",), "checkpoint": ("ckpt",), "gpus": ("trainer.devices",),
    "height": ("H",), "width": ("W",), "negative": ("negative_prompt",),
}


def flag_overrides(catalog: Catalog, config: str, flag: str) -> list[str]:
    """What a ``--flag`` a command does not have most likely means: ``group=OPTION`` of a config group, or up to
    three ``key=N`` / ``key=VALUE`` (its synonyms' keys first, then keys named like it); empty when nothing fits."""
    cfg = catalog.configs.get(config)
    if cfg is None:
        return []
    name = flag.lstrip("-").replace("-", "_")
    if name in [d.group for d in cfg.group_defaults()]:
        return [f"{name}=OPTION"]
    found = [e for _, entries in command_entries(catalog, config) for e in entries]
    gk = group_keys(catalog, config)
    found += [e for g in gk for e in g.entries] + [e for g in gk for e, _ in g.others]
    defaults: dict[str, str] = {}
    for e in found:
        if not e.key.rpartition(".")[2].startswith("_"):
            defaults.setdefault(e.key, e.default)
    keys = [k for k in defaults if k.rpartition(".")[2].lower() == name.lower()]
    keys = next(([k] for k in (*FLAG_SYNONYMS.get(name.lower(), ()), name) if k in defaults), keys[:3])
    return [f"{k}={_placeholder(defaults[k])}" for k in keys]


def _placeholder(default: str) -> str:
    """What to type for a key in a hint: N for a whole number, true for a switch, else VALUE."""
    if re.fullmatch(r"-?[0-9]+", default):
        return "N"
    return "true" if default in ("true", "false") else "VALUE"


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


def known_names(catalog: Catalog) -> list[str]:
    """What ``ldmkit configs NAME`` accepts (besides group/option)."""
    return [*catalog.groups, *(command_name(c) for c in catalog.commands()), *catalog.shared()]


def main(argv: list[str] | None = None) -> int:
    """``python -m ldmkit.configdoc DOCS``: (re)generate DOCS/config/ from conf/."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m ldmkit.configdoc DOCS_DIR  (writes DOCS_DIR/config/*.md from conf/)", file=sys.stderr)
        return 2
    from ldmkit.configdoc_md import write_docs

    try:
        paths = write_docs(Path(args[0]))
    except ConfigDocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(paths)} pages in {Path(args[0]) / DOCS_SUBDIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
