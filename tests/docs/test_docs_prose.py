"""The docs' prose cannot rot either: inline ``key=value`` / ``group.key`` spans name real options, relative
links point to existing files, and the defaults in the option tables of docs/commands/ and docs/groups/ (rows
``| `key` | `default` | ...``) are those of the composed config."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from docs_pages import FENCE, GENERATED, REPO, pages

# --- prose: option names in inline code, relative links ---

INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
OVERRIDE = re.compile(r"^(\+)?([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)=(\S*)$")
DOTTED = re.compile(r"^([a-z_][a-z0-9_]*)(\.[a-z0-9_]+)+$")
FILE_SUFFIX = re.compile(r"\.(json|jsonl|yaml|yml|png|jpg|tar|ckpt|safetensors|pth|pt|bin|txt|md|csv|log|py|toml)$")
TASKS = ("train_ae", "train_ldm", "encode_dataset", "sample", "eval_fid", "f_study", "report", "info",
         "import_compvis")


def _paths(node, prefix: str = "") -> set[str]:
    """Every dotted key of a plain config."""
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            out |= {f"{prefix}{k}"} | _paths(v, f"{prefix}{k}.")
    return out


@pytest.fixture(scope="module")
def vocabulary() -> tuple[set[str], dict[str, set[str]]]:
    """Every config key any command has (with any option of its groups), and each group's options."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from ldmkit.runner import conf_dir

    conf = Path(conf_dir())
    groups = {p.name: {y.stem for y in p.glob("*.yaml")} for p in conf.iterdir() if p.is_dir()}
    keys: set[str] = set()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf), version_base="1.3"):
        done: set[str] = set()  # a group's options add the same keys whichever command composes them
        for task in TASKS:
            base = compose(task, return_hydra_config=False)
            keys |= _paths(OmegaConf.to_container(base, resolve=False))
            used = {g for g in groups if f"- {g}:" in (conf / f"{task}.yaml").read_text()} - done
            done |= used
            for group in used:
                for option in groups[group]:
                    value = f"'{option}'" if option.isdigit() else option
                    cfg = compose(task, overrides=[f"{group}={value}"])
                    keys |= _paths(OmegaConf.to_container(cfg, resolve=False))
    GlobalHydra.instance().clear()
    return keys, groups


def prose(text: str) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", text)


@pytest.mark.parametrize("page", [p for p in pages() if not p.startswith(GENERATED)])
def test_inline_options_exist(page, vocabulary):
    keys, groups = vocabulary
    tops = {k.split(".")[0] for k in keys}
    bad = []
    for span in INLINE.findall(prose((REPO / page).read_text())):
        span = span.strip()
        m = OVERRIDE.match(span)
        if m:
            plus, key, value = m.groups()
            if plus or key.startswith("hydra") or (key.isupper() and len(key) > 1) or key in ("key", "group"):
                continue  # +new keys, Hydra's own settings, environment variables, `key=value` itself
            if key in groups:
                options = [v.strip("'\"") for v in value.split(",")] if value not in ("", "...") else []
                if any(o not in groups[key] and o not in ("null", "...", "…") and "|" not in o for o in options):
                    bad.append(f"`{span}`: {key}= takes {', '.join(sorted(groups[key]))}")
            elif key not in keys:
                bad.append(f"`{span}`: no option {key}")
        elif DOTTED.match(span) and not FILE_SUFFIX.search(span) and span.split(".")[0] in tops:
            if not span.startswith("hydra.") and span not in keys:
                bad.append(f"`{span}`: no option of that name")
    assert not bad, f"{page}: inline code names options that do not exist:\n  " + "\n  ".join(bad)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", pages())
def test_relative_links_resolve(page):
    text = (REPO / page).read_text()
    missing = []
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = ((REPO / page).parent / target.split("#")[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{page}: links to missing files: {missing}"


# --- option tables: the defaults shown must be the composed config's ---

CELLS = re.compile(r"(?<!\\)\|")
CODE = re.compile(r"`([^`]+)`")
ALIAS = re.compile(r"^`[^`]+`\s*\(`([^`]+)`\)$")  # `--samples N` (`samples`), `DIR` (`dir`)
PLACEHOLDERS = {"<date>_<time>": "${now:%Y-%m-%d_%H-%M-%S}"}


@dataclass
class DefaultRow:
    """One row of an option table: the keys of its first cell and the defaults of its second."""

    lineno: int
    option: str | None  # the group option the table describes (group pages), from its header or section
    keys: list[str]
    defaults: list[str]


def default_rows(text: str, options: set[str]) -> list[DefaultRow]:
    """The rows of every table whose second column is headed ``default`` (``default (`kl_f4`)`` names the group
    option; otherwise a ``## <option>`` section does). Cells without code spans (``LPIPS-VGG``, ``–``) are read
    as prose, except ``required`` (a ``???`` key)."""
    rows, section, table_option, in_table = [], None, None, False
    lines = FENCE.sub(lambda m: "\n" * m[0].count("\n"), text).splitlines()
    for n, line in enumerate(lines, 1):
        if line.startswith("#"):
            words = line.lstrip("#").split()
            section = words[0].strip("`") if words and words[0].strip("`") in options else None
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in CELLS.split(line.strip())[1:-1]]
        if len(cells) < 2:
            continue
        if cells[1].lower().startswith("default"):
            in_table = True
            named = CODE.findall(cells[1])
            table_option = named[0] if named else section
            continue
        if not in_table or set(cells[0]) <= set("-: "):
            continue
        alias = ALIAS.match(cells[0])
        keys = [alias[1]] if alias else [k for k in CODE.findall(cells[0]) if "*" not in k]
        defaults = CODE.findall(cells[1]) or (["???"] if cells[1] == "required" else [])
        if keys and defaults:
            rows.append(DefaultRow(n, table_option, keys, defaults))
    return rows


def _doc_value(text: str):
    """A default as written in the docs, read as YAML the way OmegaConf reads conf/ (``5e-4`` is a float)."""
    import yaml
    from omegaconf._utils import get_yaml_loader

    for placeholder, real in PLACEHOLDERS.items():
        text = text.replace(placeholder, real)
    try:
        return yaml.load(text, Loader=get_yaml_loader())  # OmegaConf's safe loader
    except yaml.YAMLError:
        return text


def _same(doc, conf) -> bool:
    """Equal as config values (1e-6 == 1.0e-06, [1, 2] == [1,2], null == None)."""
    if isinstance(doc, list) and isinstance(conf, list):
        return len(doc) == len(conf) and all(_same(a, b) for a, b in zip(doc, conf, strict=True))
    if isinstance(doc, bool) or isinstance(conf, bool):
        return doc is conf
    if isinstance(doc, int | float) and isinstance(conf, int | float):
        return float(doc) == float(conf)
    return doc == conf


def _page_config(page: str) -> tuple[str | None, str | None]:
    """(command config, group) whose defaults a page's tables show: docs/commands/<command>.md or
    docs/groups/<group>.md (composed with the first command that uses the group)."""
    path = Path(page)
    if path.parent.as_posix() == "docs/commands":
        return path.stem.replace("-", "_"), None
    if path.parent.as_posix() == "docs/groups":
        from ldmkit.runner import conf_dir

        conf = Path(conf_dir())
        task = next(t for t in TASKS if re.search(rf"^\s*- {path.stem}:", (conf / f"{t}.yaml").read_text(), re.M))
        return task, path.stem
    return None, None


TABLE_PAGES = [p for p in pages() if _page_config(p)[0]]


@pytest.mark.parametrize("page", TABLE_PAGES)
def test_table_defaults_match_the_config(page, vocabulary, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from ldmkit.runner import conf_dir

    monkeypatch.delenv("LDMKIT_CACHE", raising=False)  # defaults as a user without it sees them
    _, groups = vocabulary
    task, group = _page_config(page)
    rows = default_rows((REPO / page).read_text(), groups.get(group, set()))
    bad = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(conf_dir(), version_base="1.3"):
        configs = {}
        for row in rows:
            option = row.option if group and row.option in groups[group] else None
            if option not in configs:
                value = f"'{option}'" if option and option.isdigit() else option
                configs[option] = compose(task, overrides=[f"{group}={value}"] if option else [],
                                          return_hydra_config=True)
            cfg = configs[option]
            raw = OmegaConf.to_container(cfg, resolve=False)
            if len(row.keys) != len(row.defaults):
                bad.append(f"line {row.lineno}: {len(row.keys)} keys {row.keys} but {len(row.defaults)} defaults "
                           f"{row.defaults}")
                continue
            for key, shown in zip(row.keys, row.defaults, strict=True):
                if key.endswith("="):  # a group: its default option
                    name = key[:-1]
                    actual = cfg.hydra.runtime.choices.get(name, "<not a group of this command>")
                    if str(_doc_value(shown)) != str(actual):
                        bad.append(f"line {row.lineno}: {key} defaults to {actual}, not {shown}")
                    continue
                candidates = [f"{group}.{key}", key] if group else [key]
                found = next((c for c in candidates if _lookup(raw, c) is not _NONE), None)
                if found is None:
                    bad.append(f"line {row.lineno}: {key} is not an option of {task}"
                               + (f" with {group}={option}" if option else ""))
                    continue
                doc, plain = _doc_value(shown), _lookup(raw, found)
                try:
                    resolved = OmegaConf.select(cfg, found, throw_on_missing=False)
                except Exception:  # an interpolation that needs a run (${hydra:...})
                    resolved = plain
                if not (_same(doc, plain) or _same(doc, resolved)):
                    bad.append(f"line {row.lineno}: {found} defaults to {plain!r}"
                               + (f" (= {resolved!r})" if resolved != plain else "") + f", not {shown}")
    GlobalHydra.instance().clear()
    assert not bad, f"{page}: option tables show wrong defaults:\n  " + "\n  ".join(bad)


_NONE = object()


def _lookup(node, dotted: str):
    """The raw (unresolved) value at a dotted key of a plain config, or ``_NONE``."""
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _NONE
        node = node[part]
    return node


def test_table_check_catches_a_wrong_default():
    """The table check reads rows, aliases, ``required`` and group options the way the pages write them."""
    text = ("## folder\n\n| key | default | meaning |\n|---|---|---|\n| `path` | required | x |\n"
            "| `resolution` | `33` | x |\n| `DIR` (`dir`) | `a` | x |\n| `loss.perceptual` | LPIPS | x |\n")
    rows = default_rows(text, {"folder", "shapes"})
    assert [(r.option, r.keys, r.defaults) for r in rows] == [
        ("folder", ["path"], ["???"]), ("folder", ["resolution"], ["33"]), ("folder", ["dir"], ["a"])]
    assert _same(_doc_value("5e-4"), 0.0005) and _same(_doc_value("[1, 2]"), [1, 2])
    assert not _same(_doc_value("33"), 32) and not _same(_doc_value("1"), True)
