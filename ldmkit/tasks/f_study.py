"""``ldmkit f-study``: one job of the paper's downsampling-factor study (run all f as a multirun): train-ae ->
encode-dataset -> train-ldm with snapshots -> eval-fid per checkpoint and per sampler step count -> result.json.

Every step runs the real ``ldmkit`` command in a child process (log in ``<job>/logs/<step>.log``); a step whose
output is complete is skipped, so a killed study re-run with the same ``out=`` continues.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ldmkit import modeldir
from ldmkit.errors import UserError
from ldmkit.progress import Tracker
from ldmkit.tasks.common import console, run_dir


@dataclass
class StudyProgress:
    """The job's steps as one progress task: a line (or bar update) as each step starts, overall count and ETA."""

    tracker: Tracker
    task: int
    f: int

    def start(self, name: str) -> None:
        """Step ``name`` begins."""
        self.tracker.update(self.task, description=f"f={self.f}: {name}")

    def finish(self, kept: bool) -> None:
        """A step ended (``kept``: done earlier, so it took no time)."""
        self.tracker.update(self.task, advance=1, skipped=int(kept))


def ldmkit_step(name: str, command: str, args: list[str], job: Path, done: Path, progress: StudyProgress) -> None:
    """Run ``ldmkit COMMAND ARGS`` unless ``done`` exists; one-line error naming the log when it fails."""
    if done.is_file():
        console.print(f"  {name}: done earlier, kept")
        progress.finish(kept=True)
        return
    log = job / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    progress.start(name)
    with open(log, "w") as sink:
        proc = subprocess.run([sys.executable, "-m", "ldmkit.cli", command, *args], stdout=sink,
                              stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not done.is_file():
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise UserError(f"f-study: {name} failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'} "
                        f"(log: {log})")
    progress.finish(kept=False)


def _forwarded(group: str) -> list[str]:
    """This job's command-line overrides of a config group (``dataset=folder``, ``dataset.path=...``)."""
    from hydra.core.hydra_config import HydraConfig

    from ldmkit.runner import quote_paths

    keys = [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").split("=")[0].split(".")[0] == group]
    return quote_paths(keys)


def _args(cfg: DictConfig, step: str) -> list[str]:
    """The study's shared overrides plus the step's own."""
    return [*cfg.args.all, *cfg.args[step]]


def _eval(cfg: DictConfig, job: Path, name: str, ckpt: Path, steps: int, progress: StudyProgress) -> dict:
    """eval-fid of one model dir with ``steps`` sampler steps; its metrics."""
    out = job / "eval" / name
    weights = [f"inception_weights={cfg.inception_weights}"] if cfg.inception_weights else []
    ldmkit_step(f"eval-{name}", "eval-fid", [
        f"ckpt={ckpt}", f"samples={cfg.eval_samples}", f"sampler={cfg.sampler}", f"sampler.steps={steps}",
        "on_missing_weights=skip", *weights, *_args(cfg, "eval_fid"), f"out={out}"], job, out / "metrics.json",
        progress)
    return modeldir.read_json(out / "metrics.json")


def _throughput_steps(cfg: DictConfig, checkpoints: list[int]) -> list[tuple[int, bool]]:
    """(sampler steps, reused) per throughput point: reused when the final checkpoint's evaluation used them."""
    final = checkpoints[-1] == int(cfg.ldm_steps)
    return [(s, final and s == int(cfg.sampler_steps)) for s in sorted({int(s) for s in cfg.throughput_steps})]


SHOWN = ("fid", "kid_mean", "isc_mean", "precision", "recall", "color_acc", "shape_acc", "count_acc",
         "sampling_samples_per_s", "skipped")


def run(cfg: DictConfig) -> None:
    """Run the pipeline for ``f`` (progress: one step of the study at a time) and write result.json (read by
    ``ldmkit report``)."""
    from hydra.core.hydra_config import HydraConfig

    f = int(HydraConfig.get().runtime.choices["f"])
    checkpoints = sorted({int(c) for c in cfg.checkpoints})
    if not checkpoints or checkpoints[-1] > cfg.ldm_steps or checkpoints[0] < 1:
        raise UserError(f"checkpoints={list(checkpoints)} must lie in 1..ldm_steps={cfg.ldm_steps}")
    job = run_dir()
    console.print(f"f-study f={f} -> {job}")
    throughput = _throughput_steps(cfg, checkpoints)
    total = 3 + len(checkpoints) + sum(not reused for _, reused in throughput)
    with Tracker(console) as tracker:
        progress = StudyProgress(tracker, tracker.add(f"f={f}", total, unit="step", interval=math.inf), f)
        result = _pipeline(cfg, f, job, checkpoints, throughput, progress)
        progress.start("done")
    modeldir.write_json(job / "result.json", result)
    console.print(f"f={f}: {result['train_samples_per_s']} train samples/s -> {job / 'result.json'}")


def _pipeline(cfg: DictConfig, f: int, job: Path, checkpoints: list[int], throughput: list[tuple[int, bool]],
              progress: StudyProgress) -> dict:
    """train-ae -> encode-dataset -> train-ldm -> eval-fid per checkpoint and throughput point; the result."""
    data = [*_forwarded("dataset"), *_args(cfg, "all")]
    ldmkit_step("train-ae", "train-ae", [
        f"f={f}", *data, *_forwarded("first_stage"), f"trainer.max_steps={cfg.ae_steps}", "resume=auto",
        *cfg.args.train_ae, f"out={job / 'ae'}"], job, job / "ae" / "meta.json", progress)
    ldmkit_step("encode-dataset", "encode-dataset", [
        f"ae={job / 'ae'}", *data, f"dataset.size={cfg.dataset_size}", *cfg.args.encode_dataset,
        f"out={job / 'latents'}"], job, job / "latents" / "manifest.json", progress)
    snaps = [c for c in checkpoints if c < cfg.ldm_steps]
    ldmkit_step("train-ldm", "train-ldm", [
        f"ae={job / 'ae'}", "dataset=latents", f"dataset.path={job / 'latents'}", f"cond={cfg.cond}",
        f"unet.model_channels={cfg.unet_channels}", f"loader.batch_size={cfg.batch_size}",
        f"trainer.max_steps={cfg.ldm_steps}", f"snapshots=[{','.join(map(str, snaps))}]", *cfg.args.all,
        "resume=auto", *cfg.args.train_ldm, f"out={job / 'ldm'}"], job, job / "ldm" / "meta.json", progress)
    meta = modeldir.read_json(job / "ldm" / "meta.json")
    dirs = {c: job / "ldm" / "snapshots" / f"step_{c:07d}" for c in snaps} | {int(cfg.ldm_steps): job / "ldm"}
    quality = []
    for step in checkpoints:
        metrics = _eval(cfg, job, f"step_{step}", dirs[step], int(cfg.sampler_steps), progress)
        quality.append({"step": step, **{k: metrics[k] for k in SHOWN if k in metrics}})
    speed = []
    for steps, reused in throughput:
        if reused:
            metrics = quality[-1]  # the final checkpoint's evaluation already used these steps
        else:
            metrics = _eval(cfg, job, f"final_{steps}_steps", job / "ldm", steps, progress)
        speed.append({"sampler_steps": steps, **{k: metrics[k] for k in SHOWN if k in metrics}})
    return {"f": f, "latent_shape": meta["latent_shape"], "params": meta.get("params"),
            "train_samples_per_s": meta.get("train_samples_per_s"), "ldm_steps": meta["steps"],
            "ae_steps": 0 if f == 1 else int(cfg.ae_steps), "sampler": cfg.sampler,
            "sampler_steps": int(cfg.sampler_steps), "eval_samples": int(cfg.eval_samples),
            "checkpoints": quality, "throughput": speed, "config": OmegaConf.to_container(cfg, resolve=True)}
