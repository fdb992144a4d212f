"""Discoverability: COMMAND --help shows the command's config, `ldmkit configs`, --version, shell completion, and the
generated config reference in docs/config/ (up to date with conf/, every key in it)."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, run_inprocess

from ldmkit import configdoc

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
DOCS = ROOT / "docs"
COMMANDS = ["train-ae", "encode-dataset", "train-ldm", "sample", "eval-fid", "f-study", "report", "import-compvis",
            "info"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _out(*args: str) -> str:
    return ANSI.sub("", run_cli(*args).stdout)


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w.=-]){re.escape(word)}(?![\w.=-])", text) is not None


def _flat(node: object, prefix: str = "") -> dict[str, object]:
    """Every dotted key of a loaded YAML mapping (mappings included) -> its value."""
    out: dict[str, object] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            out[f"{prefix}{key}"] = value
            out.update(_flat(value, f"{prefix}{key}."))
    return out


def _yaml_keys(path: Path) -> dict[str, object]:
    """A conf file's keys as set on the command line (PyYAML, independent of configdoc's reader)."""
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    data.pop("defaults", None)
    group = path.parent.relative_to(CONF).as_posix() if path.parent != CONF else ""
    prefix = "" if not group or "# @package _global_" in text else group.replace("/", ".") + "."
    return _flat(data, prefix)


def _conf_files() -> list[Path]:
    return sorted(CONF.rglob("*.yaml"))


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_shows_options_groups_and_keys(command):
    out = _out(command, "--help")
    catalog = configdoc.load_catalog()
    config = catalog.configs[command.replace("-", "_")]
    assert f"Usage: ldmkit {command}" in out and "--help" in out
    for d in config.group_defaults():
        assert _has_word(out, d.group), d.group
        for option in catalog.options(d.group):
            assert _has_word(out, option), (d.group, option)
    shown = [e for _, entries in configdoc.command_entries(catalog, config.name) for e in entries
             if not e.mapping and not e.key.endswith("_")]
    assert shown
    for e in shown:
        assert _has_word(out, e.key), e.key
        if 0 < len(e.default) <= 20:
            assert e.default in out, (e.key, e.default)


def test_train_ldm_help_names_groups_choices_and_defaults():
    out = _out("train-ldm", "--help")
    groups = out[out.index("Config groups"):]
    for group, default in (("dataset", "shapes"), ("unet", "small"), ("cond", "text"), ("trainer", "default")):
        assert re.search(rf"{group}\s+{default}\s", groups), group
    for option in ("class", "clip", "inpaint", "layout", "semantic_text", "sr"):
        assert _has_word(groups, option)
    assert re.search(r"\bae\s+latest\s+the first-stage", out)
    assert re.search(r"\bsnapshots\s+\[\]", out) and "--hydra-help" in out


def test_help_flag_wins_over_positionals_and_hydra_help_still_reaches_hydra():
    assert "Config: KEY=VALUE" in _out("import-compvis", "some.yaml", "-h")
    assert "Hydra (" in run_cli("train-ae", "--hydra-help").stdout  # Hydra's own flags help


def test_configs_lists_every_group_and_option():
    out = _out("configs")
    groups = sorted({p.parent.relative_to(CONF).as_posix() for p in _conf_files() if p.parent != CONF})
    assert groups  # cond, dataset, f, first_stage, logger, sampler, trainer, unet
    for group in groups:
        assert re.search(rf"^\s*{group}: ", out, re.M), group
        for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
            assert f"{group}={option}  (conf/{group}/{option}.yaml)" in out
    for command in COMMANDS:
        assert f"ldmkit {command}  (conf/{command.replace('-', '_')}.yaml)" in out


def test_configs_group_shows_keys_defaults_and_comments():
    out = _out("configs", "sampler")
    assert out.startswith("sampler: ddim | ddpm") and "dataset=" not in out and "used by: eval-fid" in out
    ddim = out[out.index("sampler=ddim"):out.index("sampler=ddpm")]
    for line in (CONF / "sampler" / "ddim.yaml").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        value, _, comment = rest.partition("#")
        pattern = rf"sampler\.{key}\s+{re.escape(value.strip())}"
        pattern += rf"\s+{re.escape(' '.join(comment.split()[:4]))}" if comment else r"\s*$"
        assert re.search(pattern, ddim, re.M), line
    train_ldm = _out("configs", "train-ldm")
    assert "cond=text" in train_ldm and re.search(r"^\s+ae\s+latest\s+the first-stage", train_ldm, re.M)
    assert "sampler.steps" in _out("configs", "sampler/ddim")
    proc = run_inprocess("configs", "nope")
    assert proc.returncode == 2 and "known: cond, dataset" in proc.stderr and "Traceback" not in proc.stderr


def test_version():
    assert run_cli("--version").stdout.strip() == f"ldmkit {importlib.metadata.version('ldmkit')}"


def test_shell_completion_is_wired(monkeypatch):
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    script = run_cli("--show-completion", "bash").stdout
    assert "_LDMKIT_COMPLETE=complete_bash" in script and "complete " in script
    monkeypatch.delenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION")
    monkeypatch.setenv("_LDMKIT_COMPLETE", "complete_zsh")
    monkeypatch.setenv("_TYPER_COMPLETE_ARGS", "ldmkit tra")
    assert {"train-ae", "train-ldm"} <= set(re.findall(r"train-\w+", run_cli().stdout))
    monkeypatch.setenv("_TYPER_COMPLETE_ARGS", "ldmkit train-ldm cond=cl")  # overrides complete too
    out = run_cli().stdout
    assert "cond=class" in out and "cond=clip" in out and "cond=text" not in out
    monkeypatch.setenv("_LDMKIT_COMPLETE", "complete_bash")  # bash splits the word at '='
    monkeypatch.setenv("COMP_WORDS", "ldmkit train-ldm cond = cl")
    monkeypatch.setenv("COMP_CWORD", "4")
    assert run_cli().stdout.split() == ["class", "clip"]


def test_reader_matches_pyyaml():
    """configdoc's comment-keeping reader sees the same keys and values as PyYAML in every conf file."""
    for path in _conf_files():
        cfg = configdoc.read_config(CONF, path)
        expected = _yaml_keys(path)
        assert [e.key for e in cfg.entries] == list(expected), path
        for e in cfg.entries:
            value = expected[e.key]
            assert isinstance(value, dict) if e.mapping else yaml.safe_load(e.default) == value, (path, e.key)


def test_docs_config_is_up_to_date_and_has_every_key():
    pages = configdoc.markdown_pages(configdoc.load_catalog())
    stale = [rel for rel, text in pages.items() if not (DOCS / rel).is_file() or (DOCS / rel).read_text() != text]
    extra = [p.relative_to(DOCS).as_posix() for p in (DOCS / configdoc.DOCS_SUBDIR).rglob("*.md")
             if p.relative_to(DOCS).as_posix() not in pages]
    assert not stale and not extra, f"regenerate with: python -m ldmkit.configdoc docs/ (stale {stale}, extra {extra})"
    groups = {p.parent.relative_to(CONF).as_posix() for p in _conf_files() if p.parent != CONF}
    assert {f"config/{g}.md" for g in groups} <= set(pages)
    everything = "\n".join(pages.values())
    for path in _conf_files():
        for key in _yaml_keys(path):
            assert f"| `{key}` |" in everything, (path, key)


def test_help_lists_group_choices_once_default_option_keys_and_what_import_compvis_imports():
    from conftest import ldmkit_inprocess

    out = ANSI.sub("", ldmkit_inprocess(["train-ae", "--help"])[1])
    groups = out[out.index("Config groups"):out.index("Config: KEY=VALUE")]
    assert len(re.findall(r"(?<!\w)vq_f16\b", groups)) == 1 and groups.count("tensorboard") == 1  # not again below
    assert "adds TensorBoard logs in <out>/tb/" in groups
    out = ANSI.sub("", ldmkit_inprocess(["sample", "--help"])[1])
    keys = out[out.index("Default options' keys"):]
    for key, default in (("sampler.steps", "50"), ("sampler.eta", "0.0"), ("sampler.discretize", "uniform")):
        assert re.search(rf"{re.escape(key)}\s+{default}\s", keys), key
    assert re.search(r"sampler\.karras\s+\(sampler=dpmpp_2m \| euler \| euler_a \| heun\)", keys)
    assert "sampler.steps" in _out("configs", "sample") and "--prompt" in out and "--steps" in out
    top = " ".join(ANSI.sub("", ldmkit_inprocess(["--help"])[1]).split())
    assert re.search(r"import-compvis\W+Import any released CompVis model, a first stage or a whole\W+LDM", top)
