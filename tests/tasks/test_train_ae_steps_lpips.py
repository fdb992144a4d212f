"""train-ae on a fresh machine (no VGG16 weights: LPIPS left out in one line, unless required) and its step count
(training steps = generator updates, whatever the discriminator does)."""

import csv
import json

from conftest import ldmkit_inprocess
from omegaconf import OmegaConf

SMALL = ["dataset.size=8", "loader.batch_size=4", "report.images=4", "report.grid=2", "images.count=2"]
TINY = [*SMALL, "trainer.max_steps=2", "loss.discriminator=null"]
SKIP = "training without the LPIPS loss"


def _no_torch_cache(monkeypatch, tmp_path) -> str:
    """An empty torch hub cache (no vgg16-397923af.pth): the fresh offline machine."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return str(home / "hub" / "checkpoints")


def test_bare_train_ae_without_vgg_weights_trains_without_lpips(tmp_path, monkeypatch, one_thread):
    cache = _no_torch_cache(monkeypatch, tmp_path)
    out = tmp_path / "ae"
    code, output = ldmkit_inprocess(["train-ae", *TINY, f"out={out}"])
    assert code == 0, output[-2000:]
    lines = [line for line in output.splitlines() if SKIP in line]
    assert len(lines) == 1 and output.count(SKIP) == 1, output[-2000:]
    assert f"no vgg16-397923af.pth in {cache}" in lines[0] and "loss.perceptual.weights=PATH" in lines[0]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["steps"] == 2 and meta["perceptual_skipped"] == lines[0].strip()
    config = OmegaConf.load(out / "config.yaml")
    assert config.loss.perceptual is None and config.loss.perceptual_weight == 1.0


def test_required_lpips_without_weights_is_one_line_exit_2(tmp_path, monkeypatch):
    cache = _no_torch_cache(monkeypatch, tmp_path)
    out = tmp_path / "ae"
    code, output = ldmkit_inprocess(["train-ae", *TINY, "loss.perceptual.required=true", f"out={out}"])
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in output and SKIP not in output, output[-2000:]
    assert f"put vgg16-397923af.pth in {cache}" in errors[0]
    assert not (out / "meta.json").exists() and not (out / "checkpoints").exists()


def test_max_steps_counts_generator_updates_with_the_discriminator_on(tmp_path, one_thread):
    out = tmp_path / "ae"
    code, output = ldmkit_inprocess(["train-ae", *SMALL, "trainer.max_steps=3", "loss.perceptual=null",
                                     "loss.disc_start=0", "trainer.log_every_n_steps=1", f"out={out}"])
    assert code == 0, output[-2000:]
    with open(out / "logs" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["train/step"]) for r in rows] == [1.0, 2.0, 3.0]  # 3 generator updates
    assert all(r["train/d_loss"] and r["train/g_loss"] for r in rows)  # each with a discriminator update
    assert json.loads((out / "meta.json").read_text())["steps"] == 3
    log = (out / "train-ae.log").read_text()
    assert "`max_steps=3` reached" in log and "max_steps=6" not in log
    code, output = ldmkit_inprocess(["info", str(out), "json=true"])
    facts = json.loads(output)
    assert code == 0 and facts["steps"] == 3 and facts["run"]["checkpoint"]["step"] == 3
