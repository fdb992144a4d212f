"""What the CLI suggests from the catalog: shell completions of overrides, the override an unknown ``--flag``
most likely means, and the names ``ldmkit configs`` accepts."""

from __future__ import annotations

import re

from ldmkit.configdoc.catalog import Catalog, command_entries, command_name, group_keys

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
