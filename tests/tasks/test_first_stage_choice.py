"""``train-ldm first_stage=PRESET`` / ``f=N`` choose the first stage (the design card's commands as written): an
existing train-ae dir of that preset and resolution, else one trained first into <out>/first_stage; ``-m f=...``
sweeps the factor with a first stage per job; ``ae=DIR`` must agree with the choice."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli

TINY = ["trainer.max_steps=2", "loader.batch_size=4", "dataset.size=16", "images.every_n_steps=0"]
AE_ARGS = "ae_args=['trainer.max_steps=2','loss.perceptual=null','loss.discriminator=null','report.images=4'," \
          "'report.grid=2','loader.batch_size=4']"


def meta(path: Path) -> dict:
    """A model dir's meta.json."""
    return json.loads((path / "meta.json").read_text())


def test_card_command_uses_the_newest_matching_first_stage(tmp_path):
    run_cli("train-ae", "first_stage=kl_f8", "trainer.max_steps=2", "loss.perceptual=null", "loss.discriminator=null",
            "report.images=4", "report.grid=2", "loader.batch_size=4", "out=runs/train-ae/kl8", cwd=tmp_path)
    proc = run_cli("train-ldm", "first_stage=kl_f8", "cond=text", *TINY, "out=ldm", cwd=tmp_path)
    assert "runs/train-ae/kl8 (the newest train-ae dir of this preset at 32 px)" in " ".join((proc.stdout + proc.stderr).split())
    assert meta(tmp_path / "ldm")["first_stage"]["hash"] == meta(tmp_path / "runs/train-ae/kl8")["hash"]
    assert meta(tmp_path / "ldm")["f"] == 8


def test_f_sweep_trains_one_first_stage_per_job(tmp_path):
    run_cli("train-ldm", "-m", "f=4,8", "cond=none", *TINY, AE_ARGS, "out=sweep", cwd=tmp_path)
    jobs = sorted((tmp_path / "sweep").glob("*/meta.json"))
    assert [meta(j.parent)["f"] for j in jobs] == [4, 8]
    for job in jobs:  # each job trained its own first stage into <job>/first_stage (no train-ae dir existed)
        assert meta(job.parent / "first_stage")["f"] == meta(job.parent)["f"]
        assert (job.parent / "logs" / "train-ae.log").is_file()
