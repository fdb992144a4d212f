"""Prompts as people write them (free text, verbatim), flags by habit (aliases on `sample`, one line naming the
override elsewhere), Hydra's flags anywhere among the overrides, and no run dir left behind by a failed run."""

from __future__ import annotations

import pytest
from conftest import ldmkit_inprocess
from omegaconf import OmegaConf

from ldmkit.cli_args import split_hydra_args

TEXTS = ["a red circle, left of a blue square", "a=b", "it's \"quoted\", isn't it", "a [draft] cat",
         "back\\slash\\", "cost ${5}, 100%", "ünïcode 日本語 — ok", "  spaced  "]


def composed(*args: str):
    """The config ``ldmkit ARGS --cfg job`` prints (composed by Hydra, as the task would get it)."""
    code, out = ldmkit_inprocess([*args, "--cfg", "job"])
    assert code == 0, out
    return OmegaConf.create(out)


def one_line_error(*args: str) -> str:
    """The single ``error:`` line of a command that must exit 2."""
    code, out = ldmkit_inprocess(list(args))
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), out
    return lines[0]


def test_prompt_values_are_verbatim_text():
    for text in TEXTS:
        cfg = composed("sample", f"prompt={text}", f"negative_prompt={text}")
        assert (cfg.prompt, cfg.negative_prompt) == (text, text), text
    assert list(composed("sample", "prompt=[a red circle,a blue square]").prompt) == ["a red circle", "a blue square"]
    assert composed("sample", "prompt='a, b'").prompt == "a, b"  # Hydra's own quoting still means what it did
    assert list(composed("sample", *[a for t in TEXTS for a in ("--prompt", t)]).prompt) == TEXTS
    cfg = composed("sample", "--prompt", "[x] y, z", "--negative-prompt", "[a]=b, 'c'")
    assert (cfg.prompt, cfg.negative_prompt) == ("[x] y, z", "[a]=b, 'c'")
    assert "one text starting with '[': --prompt TEXT" in one_line_error("sample", "prompt=[x] y")


def test_sample_flags_are_aliases_of_overrides(tmp_path):
    cfg = composed("sample", "--prompt", "x", "--seed", "3", "--steps", "20", "--guidance", "7.5", "-n", "2",
                   "--out", f"{tmp_path}/o, k", "--ckpt", f"{tmp_path}/m")
    assert (cfg.seed, cfg.sampler.steps, cfg.guidance, cfg.n) == (3, 20, 7.5, 2)
    assert (cfg.out, cfg.ckpt, cfg.prompt) == (f"{tmp_path}/o, k", f"{tmp_path}/m", "x")
    assert "--seed and seed= both set seed" in one_line_error("sample", "--seed", "3", "seed=4")


@pytest.mark.parametrize(("args", "hint"), [
    (["eval-fid", "--steps", "20"], "type sampler.steps=20 ("),
    (["train-ae", "--max-steps", "5"], "type trainer.max_steps=5 ("),
    (["train-ldm", "--batch-size=4"], "type loader.batch_size=4 ("),
    (["sample", "--batch-size", "4"], "type batch_size=4 ("),
    (["train-ae", "--lr"], "type optim.lr=VALUE ("),
    (["eval-fid", "--sampler", "heun"], "type sampler=heun ("),
    (["sample", "--wat", "1"], "--wat is not an option of `ldmkit sample`: settings are KEY=VALUE overrides"),
    (["train-ae", "--cfg", "jb"], "--cfg jb: not one of job, hydra, all"),
])
def test_unknown_flag_is_one_line_naming_the_override(args, hint):
    assert hint in one_line_error(*args)


def test_hydra_flags_go_anywhere_among_the_overrides():
    cfg = composed("eval-fid", "seed=1", "--samples", "16")  # was: "unrecognized arguments: samples=16"
    assert (cfg.samples, cfg.seed) == (16, 1)
    assert composed("eval-fid", "--samples", "16").samples == 16
    from hydra._internal.utils import get_args_parser

    overrides, flags = split_hydra_args(["seed=0,1", "-m", "samples=16", "--info", "--cfg=job"], "eval_fid")
    parsed = get_args_parser().parse_args([*overrides, *flags])
    assert parsed.overrides == ["seed=0,1", "samples=16"] and parsed.multirun and parsed.cfg == "job"


def test_failed_run_leaves_no_run_dir(tmp_path):
    out = tmp_path / "new" / "run"
    assert "ckpt=" in one_line_error("sample", f"ckpt={tmp_path}/nope", f"out={out}")
    assert not (tmp_path / "new").exists()
    sweep = tmp_path / "sweep"  # a multirun: its job dirs and the sweep dir (multirun.yaml) go too
    code, output = ldmkit_inprocess(["eval-fid", "seed=0,1", "-m", "--samples", "16", f"ckpt={tmp_path}/nope",
                                     f"out={sweep}"])  # Hydra's own lines "Launching 2 jobs", then ours
    assert code == 2 and output.strip().splitlines()[-1].startswith("error: ") and not sweep.exists(), output
    code, output = ldmkit_inprocess(["train-ae", "-m", "f=3,4", f"out={tmp_path}/bad/sweep"])  # no job starts
    assert code == 2 and "f=3 is not an option" in output and not (tmp_path / "bad").exists(), output
    kept = tmp_path / "kept"  # the user's own dir stays, with its files; Hydra's files of the failed run go
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert "ckpt=" in one_line_error("sample", f"ckpt={tmp_path}/nope", f"out={kept}")
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
