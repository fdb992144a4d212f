"""The f-study at toy size: a 2-job multirun (f=4, 8) through the real CLI ends with report.md (both rows) and
the two plots; a re-run keeps the finished steps; `ldmkit report DIR` rebuilds the same table."""

from __future__ import annotations

import json

from conftest import run_cli
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
    proc = run_cli("f-study", "f=3", f"out={tmp_path}/s", check=False)
    assert proc.returncode == 2 and "f=3 is not an option" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("f-study", "checkpoints=[0,10]", "ldm_steps=5", f"out={tmp_path}/t", check=False)
    assert proc.returncode == 2 and "checkpoints" in proc.stderr.strip().splitlines()[-1]
    proc = run_cli("report", str(tmp_path), check=False)
    assert proc.returncode == 2 and "no result.json" in proc.stderr.strip().splitlines()[-1]
