"""Multi-process training through the real CLI: trainer=ddp on CPU (gloo), alone and inside a Hydra multirun;
the ranks split the data (a DistributedSampler for map-style data, split_by_node for shard streams)."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import run_cli


@pytest.fixture
def ae(tiny_ae):
    return tiny_ae


def _epochs_by_step(run) -> dict[int, int]:
    with open(run / "logs" / "metrics.csv") as f:
        return {int(r["step"]): int(r["epoch"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_ddp_two_ranks_split_the_data_also_in_a_multirun(ae, tmp_path):
    args = [f"ae={ae}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=6",
            "trainer.log_every_n_steps=1", "loader.batch_size=4", "dataset.size=32", "cond=class"]
    run_cli("train-ldm", *args, f"out={tmp_path}/one")
    run = tmp_path / "one"
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1 ran as its own process, in the same run dir
    assert "Starting with 2 processes" in (run / "train-ldm.log").read_text() + (run / "train_ddp_process_1.log").read_text()
    assert json.loads((run / "meta.json").read_text())["steps"] == 6
    # 32 samples, batch 4, 2 ranks: each rank's epoch is 4 batches (its half of the data), so step 4 is epoch 1
    epochs = _epochs_by_step(run)
    assert epochs[3] == 0 and epochs[4] == 1

    run_cli("train-ldm", "-m", *args[:-1], "cond=none,class", "trainer.max_steps=2", f"out={tmp_path}/sweep")
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(jobs) == 2 and all((j / "meta.json").is_file() and (j / "train_ddp_process_1.log").is_file()
                                  for j in jobs)


def test_shard_streams_split_disjointly_over_ranks(tmp_path, monkeypatch):
    """webdataset's split_by_node as ldmkit configures it: each rank reads its own shards, together all."""
    import io

    import webdataset as wds
    from PIL import Image

    from ldmkit.data.wds import wds_dataset

    for k in range(4):
        with wds.TarWriter(str(tmp_path / f"img{k:05d}.tar")) as sink:
            for j in range(5):
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (10 * k, 10 * j, 0)).save(buf, "PNG")
                sink.write({"__key__": f"{k:04d}{j:05d}", "png": buf.getvalue(), "txt": f"{k} {j}"})
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = wds_dataset(f"{tmp_path}/img{{00000..00003}}.tar", resolution=8, shuffle=0)
        seen.append({item["key"] for item in ds})
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 10 and len(seen[0] | seen[1]) == 20


def test_submitit_launcher_runs_a_sweep(ae, tmp_path):
    """Cluster launch goes through Hydra's submitit plugin: its local flavour runs the jobs here for real."""
    run_cli("train-ldm", "-m", "hydra/launcher=submitit_local", f"ae={ae}", "cond=none,class", "trainer.max_steps=2",
            "loader.batch_size=4", "dataset.size=16", f"out={tmp_path}/sweep")
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [json.loads((j / "meta.json").read_text())["cond"] for j in jobs] == ["NoConditioner", "ClassConditioner"]
    assert (tmp_path / "sweep" / ".submitit").is_dir()
    slurm = run_cli("train-ldm", "hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2", "trainer=ddp",
                    "trainer.num_nodes=2", "--cfg", "hydra")
    assert "SlurmLauncher" in slurm.stdout and "nodes: 2" in slurm.stdout


def test_ddp_train_ae_with_its_discriminator(tmp_path):
    """train-ae's two optimisers each leave the other's parameters without a gradient: under trainer=ddp it still
    trains on both ranks, through the adversarial phase."""
    out = tmp_path / "ae"
    run_cli("train-ae", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=3",
            "trainer.log_every_n_steps=1", "loss.perceptual=null", "loss.disc_start=1", "loader.batch_size=4",
            "dataset.size=32", "report.images=8", "report.grid=2", f"out={out}")
    assert (out / "train_ddp_process_1.log").is_file() and json.loads((out / "meta.json").read_text())["steps"] == 3
    with open(out / "logs" / "metrics.csv") as f:
        gan_steps = [float(r["train/step"]) for r in csv.DictReader(f) if r.get("train/g_loss")]
    assert gan_steps == [2.0, 3.0]  # the adversarial terms from disc_start (step index 1) on
