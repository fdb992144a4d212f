"""Every conf file read into a :class:`Catalog`: the config groups with their options, the top-level configs,
and per file its description, ``defaults:`` list and keys (default and description of each)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from ldmkit.configdoc.yaml_comments import ConfigDocError, KeyNode, parse_yaml


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
_DEFAULT = re.compile(r"^(?:(?P<kw>override|optional)\s+)?(?P<name>[^:\s]+)\s*(?::\s*(?P<option>.*))?$")


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (not Sec. / Eq. / et al.)."""
    for match in re.finditer(r"\.\s+(?=[A-Z(])", text):
        word = text[: match.start()].rsplit(None, 1)[-1].lstrip("(").lower()
        if word not in _ABBREVIATIONS:
            return text[: match.start() + 1]
    return text


def _node_value(node: KeyNode) -> tuple[str, bool]:
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


def defaults_text(cfg: ConfigFile) -> str:
    """A file's ``defaults:`` list on one line: ``common, logger=csv, _self_``."""
    items = []
    for d in cfg.defaults:
        if not d.group:
            items.append(d.option if d.option == "_self_" or not cfg.group else f"{cfg.group}/{d.option}")
        else:
            items.append(f"{'override ' if d.override else ''}{d.group}={d.option}")
    return ", ".join(items)


def option_order(name: str) -> tuple[str | int, ...]:
    """Options in reading order, numbers by value: f=1, 2, 4 … 32; kl_f4, kl_f8, kl_f16."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))


def command_name(config: str) -> str:
    """The CLI command of a top-level config: train_ldm -> train-ldm."""
    return config.replace("_", "-")


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
