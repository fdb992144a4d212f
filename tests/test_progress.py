"""Progress reporting: plain throttled lines off a terminal (count, rate, ETA; no \\r, no escape codes), a rich bar
with rate and ETA on one, and both through the real commands (encode-dataset, eval-fid, train-ldm, f-study)."""

from __future__ import annotations

import functools
import io
import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_cli
from PIL import Image
from rich.console import Console

from ldmkit.errors import UserError
from ldmkit.progress import Tracker, duration, plain_interval, plain_line, progress_mode, rate_text, track

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LINE = re.compile(r"^(?P<name>.+?): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\) (?P<rate>\? \w+/s|[\d.]+ \w+/s|"
                  r"[\d.]+ s/\w+)(?P<info>, .+?)?, elapsed (?P<elapsed>\d+:\d\d:\d\d), ETA (?P<eta>\d+:\d\d:\d\d|\?)$")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def parsed(text: str, name: str) -> list[dict]:
    """The plain progress lines of ``name`` in ``text`` (asserting the whole text is free of \\r and ANSI codes)."""
    assert "\r" not in text and "\x1b" not in text, text[-2000:]
    rows = [m.groupdict() for m in map(LINE.match, text.splitlines()) if m and m["name"] == name]
    return rows


def plain(clock: Clock, interval: float = 10.0) -> tuple[Tracker, io.StringIO]:
    """A plain-mode tracker writing into a buffer."""
    stream = io.StringIO()
    return Tracker(Console(file=io.StringIO()), mode="plain", interval=interval, stream=stream, clock=clock), stream


def test_formatting():
    assert duration(3725.9) == "1:02:05" and duration(None) == "?" and duration(float("inf")) == "?"
    assert rate_text(41.23, "it") == "41.2 it/s" and rate_text(0.04, "step") == "25.0 s/step"
    assert rate_text(None, "img") == "? img/s"
    assert plain_line("encode-dataset", 3200, 10000, "sample", 78.0) == (
        "encode-dataset: 3200/10000 (32%) 41.0 sample/s, elapsed 0:01:18, ETA 0:02:45")
    assert plain_line("x", 7, None, "it", 2.0, info="loss 0.5") == "x: 7 3.5 it/s, loss 0.5, elapsed 0:00:02"
    # 100 items done before this run (resumed) leave the rate: 50 in 10 s
    assert plain_line("r", 150, 200, "it", 10.0, base=100) == "r: 150/200 (75%) 5.0 it/s, elapsed 0:00:10, ETA 0:00:10"


def test_plain_lines_are_throttled_with_count_rate_eta_and_a_final_line():
    clock = Clock()
    tracker, stream = plain(clock, interval=10)
    with tracker:
        task = tracker.add("encode-dataset", total=100, unit="sample")
        for _ in range(100):  # 4 samples/s: one line every 10 s = every 40 samples
            clock.now += 0.25
            tracker.update(task, advance=1)
    rows = parsed(stream.getvalue(), "encode-dataset")
    assert len(stream.getvalue().splitlines()) == len(rows) == 3
    assert [int(r["done"]) for r in rows] == [40, 80, 100] and [r["pct"] for r in rows] == ["40", "80", "100"]
    assert {r["rate"] for r in rows} == {"4.0 sample/s"}
    assert [r["elapsed"] for r in rows] == ["0:00:10", "0:00:20", "0:00:25"]
    assert [r["eta"] for r in rows] == ["0:00:15", "0:00:05", "0:00:00"]


def test_interval_zero_prints_every_change_and_no_duplicate_final_line():
    clock = Clock()
    tracker, stream = plain(clock, interval=0)
    with tracker:
        task = tracker.add("loop", total=3)
        for _ in range(3):
            clock.now += 1
            tracker.update(task, advance=1)
            tracker.update(task, completed=tracker.plain[task].completed)  # no news: no line
    assert [int(r["done"]) for r in parsed(stream.getvalue(), "loop")] == [1, 2, 3]
    assert len(stream.getvalue().splitlines()) == 3


def test_reset_starts_a_task_again_keeping_its_total():
    clock = Clock()
    tracker, stream = plain(clock, interval=0)
    with tracker:
        task = tracker.add("inner", total=4)
        clock.now += 10
        tracker.update(task, advance=4)
        tracker.reset(task)
        clock.now += 1
        tracker.update(task, advance=2)
    assert stream.getvalue().splitlines() == ["inner: 4/4 (100%) 2.5 s/it, elapsed 0:00:10, ETA 0:00:00",
                                              "inner: 2/4 (50%) 2.0 it/s, elapsed 0:00:01, ETA 0:00:01"]


def test_an_error_leaves_no_final_line_and_off_prints_nothing(monkeypatch):
    clock = Clock()
    tracker, stream = plain(clock)
    with pytest.raises(RuntimeError), tracker:
        task = tracker.add("loop", total=10)
        tracker.update(task, advance=3)
        raise RuntimeError("boom")
    assert stream.getvalue() == ""
    monkeypatch.setenv("LDMKIT_PROGRESS", "off")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True)
    assert list(track(range(5), "quiet", total=5, console=console)) == list(range(5))
    assert out.getvalue() == ""


def test_skipped_items_leave_the_rate_and_unknown_totals_have_no_eta():
    clock = Clock()
    tracker, stream = plain(clock, interval=0)
    with tracker:
        task = tracker.add("f=4", total=4, unit="step", interval=float("inf"))
        tracker.update(task, advance=2, skipped=2)  # done earlier: no time
        tracker.update(task, description="f=4: train-ldm")
        clock.now += 60
        tracker.update(task, advance=1)
        tracker.update(task, description="f=4: eval")
        open_ended = tracker.add("stream", unit="shard")
        clock.now += 2
        tracker.update(open_ended, advance=4)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "f=4: train-ldm: 2/4 (50%) ? step/s, elapsed 0:00:00, ETA ?"
    assert lines[1] == "f=4: eval: 3/4 (75%) 60.0 s/step, elapsed 0:01:00, ETA 0:01:00"
    assert lines[2] == "stream: 4 2.0 shard/s, elapsed 0:00:02"
    assert len(lines) == 3  # "f=4: eval" already said everything: no final duplicate


def test_rich_bar_on_a_terminal_shows_rate_and_eta():
    clock = Clock()
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    assert progress_mode(console) == "rich"
    with Tracker(console, clock=clock) as tracker:
        task = tracker.add("sample", total=12, unit="img")
        for _ in range(6):
            clock.now += 0.5
            tracker.update(task, advance=1)
        tracker.bar.refresh()
        middle = ANSI.sub("", out.getvalue()).split("\r")[-1]
        for _ in range(6):
            clock.now += 0.5
            tracker.update(task, advance=1)
    final = ANSI.sub("", out.getvalue()).split("\r")[-1]
    assert "\x1b[" in out.getvalue()  # a real terminal rendering
    assert re.search(r"sample .* 6/12 +50% 2\.0 img/s .*0:00:03 ETA 0:00:03", middle), middle
    assert re.search(r"sample .* 12/12 100% 2\.0 img/s .*0:00:06 ETA 0:00:00", final), final


def test_mode_and_interval_come_from_the_environment(monkeypatch):
    terminal, pipe = Console(file=io.StringIO(), force_terminal=True), Console(file=io.StringIO())
    monkeypatch.delenv("LDMKIT_PROGRESS", raising=False)
    assert progress_mode(terminal) == "rich" and progress_mode(pipe) == "plain"
    monkeypatch.setenv("LDMKIT_PROGRESS", "plain")
    assert progress_mode(terminal) == "plain"
    monkeypatch.setenv("LDMKIT_PROGRESS", "Rich")
    assert progress_mode(pipe) == "rich"
    monkeypatch.setenv("LDMKIT_PROGRESS", "tqdm")
    with pytest.raises(UserError, match="LDMKIT_PROGRESS=tqdm"):
        progress_mode(pipe)
    monkeypatch.delenv("LDMKIT_PROGRESS_INTERVAL", raising=False)
    assert plain_interval() == 10.0
    monkeypatch.setenv("LDMKIT_PROGRESS_INTERVAL", "0.5")
    assert plain_interval() == 0.5
    for bad in ("-1", "soon", "nan"):
        monkeypatch.setenv("LDMKIT_PROGRESS_INTERVAL", bad)
        with pytest.raises(UserError, match="LDMKIT_PROGRESS_INTERVAL"):
            plain_interval()


def test_generation_reports_images_and_sampler_steps(monkeypatch, capsys):
    from ldmkit.diffusion.samplers import sample_ddim
    from ldmkit.tasks.generation import generate

    class FakeLDM:
        schedule = SimpleNamespace(num_timesteps=1000)

        def sample(self, values, n, callback, **kw):
            for i in range(4):
                callback({"i": i, "total": 4})
            return torch.zeros(n, 3, 2, 2)

    monkeypatch.setenv("LDMKIT_PROGRESS", "plain")
    monkeypatch.setenv("LDMKIT_PROGRESS_INTERVAL", "0")
    images = generate(FakeLDM(), None, 5, functools.partial(sample_ddim, steps=4), 1.0, seed=0, batch_size=2)
    assert images.shape == (5, 3, 2, 2)
    rows = parsed(capsys.readouterr().err, "sample")
    expected = []  # per batch (2, 2, 1 images): a line per sampler step, then one with the batch counted
    for before, after in ((0, 2), (2, 4), (4, 5)):
        expected += [(before, f", batch step {i}/4") for i in range(1, 5)] + [(after, None)]
    assert [(int(r["done"]), r["info"]) for r in rows] == expected
    assert {r["total"] for r in rows} == {"5"} and rows[-1]["eta"] == "0:00:00"


def test_f_study_steps_are_one_line_each_with_the_overall_count(monkeypatch, tmp_path):
    from ldmkit.tasks import f_study

    clock = Clock()
    tracker, stream = plain(clock)

    def fake_run(cmd, **kw):
        clock.now += 30  # every step takes 30 s and writes its output
        (tmp_path / cmd[3]).write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(f_study.subprocess, "run", fake_run)
    (tmp_path / "train-ae").write_text("{}")  # done earlier, with the same arguments
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train-ae.args.json").write_text(json.dumps({"command": "train-ae", "args": [], "after": ""}))
    with tracker:
        progress = f_study.StudyProgress(tracker, tracker.add("f=4", 3, unit="step", interval=float("inf")), 4)
        for name in ("train-ae", "encode-dataset", "train-ldm"):
            f_study.ldmkit_step(name, name, [], tmp_path, tmp_path / name, progress)
        progress.start("done")
    assert stream.getvalue().splitlines() == [
        "f=4: encode-dataset: 1/3 (33%) ? step/s, elapsed 0:00:00, ETA ?",
        "f=4: train-ldm: 2/3 (66%) 30.0 s/step, elapsed 0:00:30, ETA 0:00:30",
        "f=4: done: 3/3 (100%) 30.0 s/step, elapsed 0:01:00, ETA 0:00:00",
    ]


# --- the real commands, off a terminal (captured output) ------------------------------------------------------


@pytest.fixture
def every_update(monkeypatch):
    """Plain lines on every update in the commands run by run_cli (they inherit the environment)."""
    monkeypatch.delenv("LDMKIT_PROGRESS", raising=False)
    monkeypatch.setenv("LDMKIT_PROGRESS_INTERVAL", "0")


def test_encode_dataset_prints_plain_sample_counts(tiny_ae, tmp_path, every_update):
    proc = run_cli("encode-dataset", f"ae={tiny_ae}", "dataset.size=20", "shard_size=8", "batch_size=4",
                   f"out={tmp_path}/lat")
    rows = parsed(proc.stderr, "encode-dataset")
    assert [int(r["done"]) for r in rows] == [4, 8, 12, 16, 20] and {r["total"] for r in rows} == {"20"}
    assert all(r["rate"].endswith(" sample/s") and r["rate"][0] != "?" for r in rows)
    assert rows[-1]["pct"] == "100" and rows[-1]["eta"] == "0:00:00"
    again = run_cli("encode-dataset", f"ae={tiny_ae}", "dataset.size=20", "shard_size=8", "batch_size=4",
                    f"out={tmp_path}/lat")
    assert [(r["done"], r["rate"]) for r in parsed(again.stderr, "encode-dataset")] == [("20", "? sample/s")]


def test_eval_fid_reports_its_image_loops(tmp_path, every_update):
    from ldmkit.data.shapes import ShapesDataset
    from ldmkit.images import to_uint8

    folder = tmp_path / "imgs"
    folder.mkdir()
    ds = ShapesDataset(size=6, resolution=32, seed=1)
    for i in range(6):
        Image.fromarray(to_uint8(ds[i]["image"]).permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    proc = run_cli("eval-fid", f"images={folder}", f"reference={folder}", "samples=6", "batch_size=4",
                   "on_missing_weights=skip",
                   f"inception_weights={tmp_path}/none.pth", f"out={tmp_path}/e")
    for name in ("eval-fid images", "eval-fid reference: hashing"):
        assert [(int(r["done"]), r["total"]) for r in parsed(proc.stderr, name)] == [(4, "6"), (6, "6")], name


def test_train_ldm_prints_plain_step_lines_instead_of_tqdm(tiny_ae, tmp_path, every_update):
    proc = run_cli("train-ldm", f"ae={tiny_ae}", "cond=class", "dataset.size=24", "loader.batch_size=4",
                   "unet.model_channels=32", "unet.num_head_channels=16", "trainer.max_steps=3",
                   f"out={tmp_path}/ldm")
    rows = parsed(proc.stderr, "train-ldm")
    assert [int(r["done"]) for r in rows] == [1, 2, 3] and {r["total"] for r in rows} == {"3"}
    assert all(re.fullmatch(r", loss [-\d.e+]+", r["info"]) for r in rows), rows
    assert all(re.fullmatch(r"[\d.]+ (step/s|s/step)", r["rate"]) for r in rows)
    assert rows[-1]["eta"] == "0:00:00" and "it/s]" not in proc.stderr and "Epoch 0:" not in proc.stderr
    assert Path(tmp_path / "ldm" / "meta.json").is_file()
