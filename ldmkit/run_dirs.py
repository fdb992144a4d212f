"""A failed run, or one that writes nothing, leaves no run dir behind: a Hydra callback notes what existed before
Hydra created the run dir."""

from __future__ import annotations

import os
from pathlib import Path

# Hydra creates the run dir (and writes .hydra/ and <job>.log into it) before the task checks its inputs. A run that
# fails removes that dir again when this run created it and nothing but Hydra's own files is in it.
RUN_DIR_CALLBACK = "++hydra.callbacks.ldmkit_run_dir._target_=ldmkit.run_dirs.RunDirWatch"
_WATCHES: list[dict] = []  # per run_task in progress (innermost last): what RunDirWatch saw


class RunDirWatch:
    """Hydra callback: notes, before Hydra creates them, whether the run (or sweep) dir and its parents exist and
    what the dir holds, and each job's output dir (for :func:`remove_unused_run_dir`)."""

    def on_run_start(self, config, **kwargs) -> None:
        """A single run: its dir is ``hydra.run.dir``."""
        _note_base(config, str(config.hydra.run.dir), sweep=False)

    def on_multirun_start(self, config, **kwargs) -> None:
        """A multirun: its jobs go under ``hydra.sweep.dir``."""
        _note_base(config, str(config.hydra.sweep.dir), sweep=True)

    def on_job_start(self, config, **kwargs) -> None:
        """The job's output dir (Hydra made it just now)."""
        if _WATCHES:
            _WATCHES[-1]["job"] = Path(str(config.hydra.runtime.output_dir)).absolute()

    def on_run_end(self, config, **kwargs) -> None:
        """Nothing to do."""

    def on_multirun_end(self, config, **kwargs) -> None:
        """Nothing to do."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        """Nothing to do."""


def _note_base(config, path: str, sweep: bool) -> None:
    """Record the run/sweep dir, what it holds now (None: it does not exist), the topmost dir Hydra will create for
    it, and the names of Hydra's own files (``.hydra/*.yaml``, ``<job name>.log``, ``multirun.yaml``)."""
    if not _WATCHES:
        return
    base = Path(path).absolute()
    missing = [p for p in (base, *base.parents) if not p.exists()]
    subdir = config.hydra.output_subdir
    hydra_files = {f"{subdir}/{name}.yaml" for name in ("config", "hydra", "overrides")} if subdir else set()
    _WATCHES[-1].update(base=base, sweep=sweep, created=missing[-1] if missing else None,
                        before=set(os.listdir(base)) if base.is_dir() else None,
                        hydra_files={*hydra_files, f"{config.hydra.job.name}.log"})


def _prune(folder: Path, before: set[str] | None, hydra_files: set[str]) -> bool:
    """Remove what this run put into ``folder`` (every entry when ``before`` is None, else those not in ``before``)
    when it is only ``hydra_files`` (paths relative to ``folder``) and empty dirs, and ``folder`` itself when this
    run created it; whether ``folder`` is gone. Any other new file keeps everything."""
    import contextlib

    if not folder.is_dir() or folder.is_symlink():
        return False
    new = [p for p in folder.iterdir() if before is None or p.name not in before]
    dirs = [d for p in new if p.is_dir() and not p.is_symlink() for d in (p, *p.rglob("*")) if d.is_dir()]
    files = [f for p in new for f in ([p] if p not in dirs else p.rglob("*")) if f not in dirs]
    if any(f.relative_to(folder).as_posix() not in hydra_files for f in files):
        return False
    with contextlib.suppress(OSError):
        for f in files:
            f.unlink()
        for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            d.rmdir()
        if before is None:
            folder.rmdir()
            return True
    return False


def remove_unused_run_dir(watch: dict) -> None:
    """After a failed run, or a run that wrote nothing but Hydra's files into a dir it created (encode-dataset
    --verify): its job dir (and a sweep dir left with only ``multirun.yaml``, also when no job started, and the
    parents this run created) when this run created it and the job wrote nothing into it; Hydra's files added to
    a user's existing dir go too, the dir stays. Never another file, never a dir that existed before."""
    job, base = watch.get("job"), watch.get("base")
    if base is None:
        return
    if job is None:  # no job started: a sweep whose job configs failed to compose (e.g. -m f=3,4)
        gone = watch["sweep"] and _prune(base, watch["before"], {"multirun.yaml"})
    elif not job.is_relative_to(base):
        return
    elif watch["sweep"]:
        before = watch["before"]
        if job == base or (before is not None and job.relative_to(base).parts[0] in before):
            return  # a job dir that may have existed before
        if not _prune(job, None, watch["hydra_files"]):
            return
        for parent in list(job.parents)[: len(job.relative_to(base).parts) - 1]:  # between job and sweep dir
            if not _prune(parent, None, set()):
                return
        gone = _prune(base, before, {"multirun.yaml"})
    else:
        gone = job == base and _prune(base, watch["before"], watch["hydra_files"])
    created = watch["created"]
    if gone and created is not None and base.is_relative_to(created):
        for parent in base.parents:
            if not parent.is_relative_to(created) or not _prune(parent, None, set()):
                break
