"""``ldmkit f-study``: one job of the paper's downsampling-factor study (run all f as a multirun): train-ae ->
encode-dataset -> train-ldm with snapshots -> eval-fid per checkpoint and per sampler step count -> result.json.

Every step runs the real ``ldmkit`` command in a child process (log in ``<job>/logs/<step>.log``); a step whose
output is complete and was made by the same arguments and inputs (``<job>/logs/<step>.args.json``) is skipped, so a
killed study re-run with the same ``out=`` continues, and one re-run with other arguments redoes what they change.
A multirun checks every job's f against the resolution (``SweepCheck``, a Hydra callback) before the first starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ldmkit import modeldir
from ldmkit.console import console
from ldmkit.errors import UserError
from ldmkit.progress import Tracker
from ldmkit.tasks.common import run_dir


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


def ldmkit_step(name: str, command: str, args: list[str], job: Path, done: Path, progress: StudyProgress,
                after: str = "") -> str:
    """Run ``ldmkit COMMAND ARGS`` unless ``done`` exists from the same command, arguments and input (``after``: the
    key of the step it reads); one-line error naming the log when it fails. Returns this step's key."""
    args = [str(a) for a in args]
    record = {"command": command, "args": _portable(args, job), "after": after}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    record_path = job / "logs" / f"{name}.args.json"
    earlier = modeldir.read_json(record_path) if record_path.is_file() else None
    reason = rerun_reason(earlier, record)
    if done.is_file() and reason is None:
        console.print(f"  {name}: done earlier, kept")
        progress.finish(kept=True)
        return key
    out = done.parent
    if reason is not None and out != job and out.is_dir() and any(out.iterdir()):
        console.print(f"  {name}: {reason}: run again (its earlier output in {out} is replaced)")
        shutil.rmtree(out)  # resume=auto would otherwise continue that run's checkpoint
    log = job / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    modeldir.write_json(record_path, {**record, "key": key})  # before the run: a killed run resumes only as itself
    progress.start(name)
    with open(log, "w") as sink:
        proc = subprocess.run([sys.executable, "-m", "ldmkit.cli", command, *args], stdout=sink,
                              stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not done.is_file():
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise UserError(f"f-study: {name} failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'} "
                        f"(log: {log})")
    progress.finish(kept=False)
    return key


def _portable(args: list[str], job: Path) -> list[str]:
    """The arguments with this job's dir written as ``<job>`` (a moved study keeps its steps)."""
    return [a.replace(str(job), "<job>") for a in args]


def rerun_reason(earlier: dict | None, record: dict) -> str | None:
    """Why output made under the ``earlier`` record does not count for ``record`` (None: the same step)."""
    if earlier is None:
        return "done earlier without a record of its arguments"
    if earlier.get("command") != record["command"] or earlier.get("args") != record["args"]:
        was, now = list(earlier.get("args") or []), record["args"]
        gone, new = [a for a in was if a not in now], [a for a in now if a not in was]
        change = "; ".join(part for part in (f"now {' '.join(new)}" if new else "",
                                             f"was {' '.join(gone)}" if gone else "") if part)
        return f"done earlier with other arguments ({change or 'another order'})"
    if earlier.get("after") != record["after"]:
        return "done earlier from another input (a step before it ran again)"
    return None


def _forwarded(group: str) -> list[str]:
    """This job's command-line overrides of a config group (``dataset=folder``, ``dataset.path=...``)."""
    from hydra.core.hydra_config import HydraConfig

    from ldmkit.cli_args import quote_paths

    keys = [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").split("=")[0].split(".")[0] == group]
    return quote_paths(keys)


def _args(cfg: DictConfig, step: str) -> list[str]:
    """The study's shared overrides plus the step's own."""
    return [*cfg.args.all, *cfg.args[step]]


def _eval(cfg: DictConfig, job: Path, name: str, ckpt: Path, steps: int, progress: StudyProgress, after: str) -> dict:
    """eval-fid of one model dir (made by the step keyed ``after``) with ``steps`` sampler steps; its metrics."""
    out = job / "eval" / name
    weights = [f"inception_weights={cfg.inception_weights}"] if cfg.inception_weights else []
    ldmkit_step(f"eval-{name}", "eval-fid", [
        f"ckpt={ckpt}", f"samples={cfg.eval_samples}", f"sampler={cfg.sampler}", f"sampler.steps={steps}",
        "on_missing_weights=skip", *weights, *_args(cfg, "eval_fid"), f"out={out}"], job, out / "metrics.json",
        progress, after)
    return modeldir.read_json(out / "metrics.json")


def _throughput_steps(cfg: DictConfig, checkpoints: list[int]) -> list[tuple[int, bool]]:
    """(sampler steps, reused) per throughput point: reused when the final checkpoint's evaluation used them."""
    final = checkpoints[-1] == int(cfg.ldm_steps)
    return [(s, final and s == int(cfg.sampler_steps)) for s in sorted({int(s) for s in cfg.throughput_steps})]


def check_job(cfg: DictConfig, f: int) -> None:
    """The checks train-ae and train-ldm make of f and the resolution, made before this job's first step runs."""
    from ldmkit.tasks.train_ae import check_resolution
    from ldmkit.tasks.train_ldm import _check_unet_multiple

    res = int(cfg.dataset.resolution)
    check_resolution(res, f)
    mult = _ldm_channel_mult(cfg)
    if mult is not None:
        unet = OmegaConf.create({"unet": {"channel_mult": mult}})
        _check_unet_multiple(unet, [0, res // f, res // f], f, f"dataset.resolution={res}", "set dataset.resolution to")


def _ldm_channel_mult(cfg: DictConfig) -> list[int] | None:
    """``unet.channel_mult`` of this study's train-ldm step: train-ldm's default UNet, or as ``args`` set it (None
    when they name a UNet there is no such file of: train-ldm says so)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from ldmkit.hydra_errors import hydra_error_line
    from ldmkit.runner import conf_dir

    root = Path(conf_dir())
    defaults = OmegaConf.load(root / "train_ldm.yaml").defaults
    choice = next(str(d["unet"]) for d in defaults if isinstance(d, DictConfig) and "unet" in d)
    mult = None
    try:
        overrides = OverridesParser.create().parse_overrides([*cfg.args.all, *cfg.args.train_ldm])
    except OverrideParseException as exc:
        raise UserError(f"args.all / args.train_ldm: {hydra_error_line(exc)}") from None
    for override in overrides:
        if override.key_or_group == "unet" and not override.is_delete():
            choice, mult = str(override.value()), None
        elif override.key_or_group == "unet.channel_mult" and not override.is_delete():
            mult = list(override.value())
    if mult is None:
        node = root / "unet" / f"{choice}.yaml"
        mult = list(OmegaConf.load(node).get("channel_mult") or [1]) if node.is_file() else None
    return None if mult is None else [int(m) for m in mult]


def _sweep_jobs(config: DictConfig) -> Iterator[DictConfig]:
    """Each job's config of a multirun, composed as the basic sweeper will compose it (nothing for other sweepers)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return
    loader = GlobalHydra.instance().config_loader()
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create(config_loader=loader).parse_overrides([*params, *config.hydra.overrides.task])
    for batch in BasicSweeper.split_arguments(overrides, None):
        for job in batch:
            yield loader.load_sweep_config(config, list(job))


class SweepCheck(Callback):
    """Hydra callback: check every job of ``f-study -m`` before the first starts; one line naming each bad f."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any job of ``-m``: stop with exit 2 and one line when a job cannot run (Hydra would turn an
        exception of a callback into a warning and start the jobs anyway)."""
        from ldmkit.runner import EXIT_USAGE, user_error_line

        try:
            self.check(config)
        except UserError as exc:
            print(f"error: {user_error_line(exc)}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None

    @staticmethod
    def check(config: DictConfig) -> None:
        """Compose each job's config and make its checks: one UserError naming every f that cannot run."""
        from hydra.errors import HydraException

        try:
            jobs = list(_sweep_jobs(config))
        except HydraException:  # a job that does not compose: the sweeper says so in its words, before any job
            return
        problems: dict[str, list[int]] = {}
        for job in jobs:
            f = int(job.hydra.runtime.choices["f"])
            try:
                check_job(job, f)
            except UserError as exc:
                problems.setdefault(str(exc), []).append(f)
        if problems:
            bad = sorted({f for fs in problems.values() for f in fs})
            raise UserError(f"f-study: {sum(map(len, problems.values()))} of {len(jobs)} jobs cannot run "
                            f"(f={','.join(map(str, bad))}), so none was started: {'; '.join(problems)}")


SHOWN = ("fid", "kid_mean", "isc_mean", "precision", "recall", "color_acc", "shape_acc", "count_acc",
         "sampling_samples_per_s", "skipped")


def run(cfg: DictConfig) -> None:
    """Run the pipeline for ``f`` (progress: one step of the study at a time) and write result.json (read by
    ``ldmkit report``)."""
    from hydra.core.hydra_config import HydraConfig

    f = int(HydraConfig.get().runtime.choices["f"])
    check_job(cfg, f)
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
    ae_key = ldmkit_step("train-ae", "train-ae", [
        f"f={f}", *data, *_forwarded("first_stage"), f"trainer.max_steps={cfg.ae_steps}", "resume=auto",
        *cfg.args.train_ae, f"out={job / 'ae'}"], job, job / "ae" / "meta.json", progress)
    latents_key = ldmkit_step("encode-dataset", "encode-dataset", [
        f"ae={job / 'ae'}", *data, f"dataset.size={cfg.dataset_size}", *cfg.args.encode_dataset,
        f"out={job / 'latents'}"], job, job / "latents" / "manifest.json", progress, ae_key)
    snaps = [c for c in checkpoints if c < cfg.ldm_steps]
    ldm_key = ldmkit_step("train-ldm", "train-ldm", [
        f"ae={job / 'ae'}", "dataset=latents", f"dataset.path={job / 'latents'}", f"cond={cfg.cond}",
        f"unet.model_channels={cfg.unet_channels}", f"loader.batch_size={cfg.batch_size}",
        f"trainer.max_steps={cfg.ldm_steps}", f"snapshots=[{','.join(map(str, snaps))}]", *cfg.args.all,
        "resume=auto", *cfg.args.train_ldm, f"out={job / 'ldm'}"], job, job / "ldm" / "meta.json", progress, latents_key)
    meta = modeldir.read_json(job / "ldm" / "meta.json")
    dirs = {c: job / "ldm" / "snapshots" / f"step_{c:07d}" for c in snaps} | {int(cfg.ldm_steps): job / "ldm"}
    quality = []
    for step in checkpoints:
        metrics = _eval(cfg, job, f"step_{step}", dirs[step], int(cfg.sampler_steps), progress, ldm_key)
        quality.append({"step": step, **{k: metrics[k] for k in SHOWN if k in metrics}})
    speed = []
    for steps, reused in throughput:
        if reused:
            metrics = quality[-1]  # the final checkpoint's evaluation already used these steps
        else:
            metrics = _eval(cfg, job, f"final_{steps}_steps", job / "ldm", steps, progress, ldm_key)
        speed.append({"sampler_steps": steps, **{k: metrics[k] for k in SHOWN if k in metrics}})
    return {"f": f, "latent_shape": meta["latent_shape"], "params": meta.get("params"),
            "train_samples_per_s": meta.get("train_samples_per_s"), "ldm_steps": meta["steps"],
            "ae_steps": 0 if f == 1 else int(cfg.ae_steps), "sampler": cfg.sampler,
            "sampler_steps": int(cfg.sampler_steps), "eval_samples": int(cfg.eval_samples),
            "checkpoints": quality, "throughput": speed, "config": OmegaConf.to_container(cfg, resolve=True)}
