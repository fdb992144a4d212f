"""The f-study at toy size: a 2-job multirun (f=4, 8) through the real CLI ends with report.md (both rows) and
the two plots; a re-run keeps the finished steps; `ldmkit report DIR` rebuilds the same table."""

from __future__ import annotations

import json

import pytest
from conftest import ldmkit_inprocess, run_cli, run_inprocess
from PIL import Image

TOY = ["ae_steps=4", "ldm_steps=6", "checkpoints=[3,6]", "dataset_size=48", "batch_size=8", "eval_samples=6",
       "sampler_steps=4", "throughput_steps=[2,4]", "args.train_ae=['loss.perceptual=null','loss.discriminator=null',"
       "'report.images=8','report.grid=2','loader.batch_size=4']"]


def test_two_job_f_study_writes_report_and_plots(inception_weights, tmp_path):
    out = tmp_path / "study"
    proc = run_cli("f-study", "-m", "f=4,8", *TOY, f"inception_weights={inception_weights}", f"out={out}",
                   timeout=1200)
    results = sorted(out.rglob("result.json"))
    assert len(results) == 2
    rows = [json.loads(p.read_text()) for p in results]
    assert sorted(r["f"] for r in rows) == [4, 8]
    for r in rows:
        side = 32 // r["f"]
        assert r["latent_shape"][1:] == [side, side] and r["params"] > 0 and r["train_samples_per_s"] > 0
        assert [c["step"] for c in r["checkpoints"]] == [3, 6]
        assert all(c["fid"] >= 0 and 0 <= c["shape_acc"] <= 1 for c in r["checkpoints"])
        assert [t["sampler_steps"] for t in r["throughput"]] == [2, 4]
        assert all(t["sampling_samples_per_s"] > 0 for t in r["throughput"])
    report = (out / "report.md").read_text()
    assert "report:" in proc.stdout + proc.stderr
    table = [line for line in report.splitlines() if line.startswith("| LDM-")]
    assert [line.split("|")[1].strip() for line in table] == ["LDM-4", "LDM-8"]
    assert "| 3×8×8 |" in table[0] and "| 4×4×4 |" in table[1]
    assert "FID @3" in report and "FID @6" in report
    for name in ("fig5_quality_vs_steps.png", "fig6_quality_vs_throughput.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200
        assert f"({name})" in report

    # a re-run of one job keeps every finished step; `ldmkit report` rebuilds the same table
    job = results[0].parent
    again = run_cli("f-study", f"f={rows[0]['f']}", *TOY, f"inception_weights={inception_weights}", f"out={job}")
    text = again.stdout + again.stderr
    # train-ae, encode, train-ldm, 2 checkpoints, 1 more sampler step count (4 steps = the final checkpoint's)
    assert text.count("done earlier, kept") == 6
    (out / "report.md").unlink()
    run_cli("report", str(out))
    assert (out / "report.md").read_text() == report


def test_f_study_bad_input_is_one_line(tmp_path):
    proc = run_inprocess("f-study", "f=3", f"out={tmp_path}/s")
    assert proc.returncode == 2 and "f=3 is not an option" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_inprocess("f-study", "checkpoints=[0,10]", "ldm_steps=5", f"out={tmp_path}/t")
    assert proc.returncode == 2 and "checkpoints" in proc.stderr.strip().splitlines()[-1]
    proc = run_inprocess("report", str(tmp_path))
    assert proc.returncode == 2 and "no result.json" in proc.stderr.strip().splitlines()[-1]


def test_a_sweep_is_checked_before_its_first_job(tmp_path):
    """f=16 (3x3 latent: not divisible by the UNet's 2) and f=32 (48 % 32) cannot run at 48 px: one line naming
    both, exit 2, and no job dir at all, though f=32 is the first job and f=8 could run."""
    code, text = ldmkit_inprocess(["f-study", "-m", "f=32,8,16", "dataset.resolution=48", *TOY, f"out={tmp_path}/s"])
    line = text.strip().splitlines()[-1]
    assert code == 2 and line.startswith("error: f-study: 2 of 3 jobs cannot run (f=16,32), so none was started")
    assert "the 3x3 latent (f=16) is not divisible by 2" in line and "dataset.resolution=48 is too small for f=32" in line
    assert "f=8" not in line and not (tmp_path / "s").exists()


def test_a_kept_step_is_keyed_by_all_its_arguments(tmp_path):
    """Output of the same command, arguments and input is kept; other arguments (or another input) run the step
    again, saying why, into a fresh output dir (no stale checkpoint to resume)."""
    from ldmkit.console import console
    from ldmkit.errors import UserError
    from ldmkit.progress import Tracker
    from ldmkit.tasks.f_study import StudyProgress, ldmkit_step, rerun_reason

    job = tmp_path / "0_f4"
    done, stale = job / "ae" / "meta.json", job / "ae" / "checkpoints" / "last.ckpt"

    def step(resolution: int) -> str:
        """The train-ae step as the study runs it (here `ldmkit info` with these arguments: it fails at once)."""
        args = [f"dataset.resolution={resolution}", f"out={job / 'ae'}"]
        return ldmkit_step("train-ae", "info", args, job, done, progress, after="ab12")

    def finished() -> None:
        """The step's output as a finished run leaves it."""
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_text("ckpt")
        done.write_text("{}")

    with Tracker(console, mode="off") as tracker, console.capture() as said:
        progress = StudyProgress(tracker, tracker.add("f=4", 9), 4)
        with pytest.raises(UserError, match="train-ae failed"):
            step(32)  # records its arguments before it runs
        finished()
        key = step(32)  # the same arguments: kept
        assert step(32) == key and done.is_file() and stale.is_file()
        with pytest.raises(UserError, match="train-ae failed"):
            step(64)  # another resolution: run again, the old output removed first
        assert not stale.exists()
    text = " ".join(said.get().split())  # rich wraps long lines
    assert text.count("train-ae: done earlier, kept") == 2
    assert "train-ae: done earlier with other arguments (now dataset.resolution=64; was dataset.resolution=32): " \
        "run again (its earlier output in" in text
    assert f"in{job / 'ae'}isreplaced" in "".join(text.split())  # (a long path may be folded)
    earlier = json.loads((job / "logs" / "train-ae.args.json").read_text())
    assert earlier["args"] == ["dataset.resolution=64", "out=<job>/ae"]
    assert rerun_reason(earlier, {**earlier, "after": "cd34"}).startswith("done earlier from another input")
    assert rerun_reason(earlier, dict(earlier)) is None and rerun_reason(None, earlier) is not None
