"""Hand a subcommand's trailing arguments to a real ``@hydra.main`` entry (multirun, --cfg, -p, --help)."""

from __future__ import annotations

import importlib
import importlib.resources
import os
import sys
import traceback

from ldmkit.cli_args import (  # noqa: F401 - re-exported
    PATH_KEYS,
    drop_null_groups,
    quote_numeric_groups,
    quote_paths,
    quote_text,
    quote_value,
    split_hydra_args,
    verbatim,
)
from ldmkit.hydra_errors import hydra_error_line
from ldmkit.run_dirs import _WATCHES, RUN_DIR_CALLBACK, remove_unused_run_dir

EXIT_USAGE = 2
EXIT_CRASH = 1
DEBUG_FLAG = "--debug"  # full tracebacks (also HYDRA_FULL_ERROR=1); accepted before or after the subcommand
FULL_ERROR = "HYDRA_FULL_ERROR"


def conf_dir() -> str:
    """Absolute path of the shipped ``conf/`` folder (works editable and from a wheel)."""
    return str(importlib.resources.files("ldmkit.conf"))


def _task_main(task: str, state: dict):
    """Build the hydra-decorated entry for ``ldmkit.tasks.<task>``."""
    import hydra

    @hydra.main(version_base="1.3", config_path=conf_dir(), config_name=task)
    def _main(cfg) -> None:
        state["started"] = True
        env = dict(os.environ)
        argv = sys.argv
        set_env(FULL_ERROR, state["full_error"])  # the job (and what it spawns) sees the user's setting
        pin_job_argv(state["argv0"], state["command"])
        try:
            module = importlib.import_module(f"ldmkit.tasks.{task}")
            module.run(cfg)
        except Exception as exc:  # only UserError is reported tersely
            from hydra.errors import InstantiationException
            from omegaconf.errors import MissingMandatoryValue

            from ldmkit.errors import UserError

            while isinstance(exc, InstantiationException) and isinstance(exc.__cause__, Exception):
                exc = exc.__cause__  # a UserError raised inside a constructor built from _target_

            if isinstance(exc, UserError | MissingMandatoryValue):
                if state["debug"]:
                    traceback.print_exception(exc)
                print(f"error: {user_error_line(exc)}", file=sys.stderr)
                raise SystemExit(EXIT_USAGE) from None
            raise
        finally:
            sys.argv = argv
            _reset_between_jobs(env)

    return _main


def user_error_line(exc: Exception) -> str:
    """The one line for a UserError, or for a mandatory (``???``) option left unset."""
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(exc, MissingMandatoryValue) and getattr(exc, "full_key", None):
        return f"{exc.full_key} is required: pass {exc.full_key}=VALUE"
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def set_env(name: str, value: str | None) -> None:
    """Set an environment variable, or remove it for None."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def pin_job_argv(argv0: str, command: str) -> None:
    """Make ``sys.argv`` re-run exactly this job in its own output dir: Lightning's DDP launcher starts the
    other ranks from ``sys.argv`` and ``hydra.run.dir``, also for a job of a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    hc = HydraConfig.get()
    job_dir = hc.runtime.output_dir
    overrides = [o for o in hc.overrides.task if not o.lstrip("+").startswith("out=")]
    sys.argv = [argv0, command, *overrides, quote_value("out", job_dir)]
    with read_write(hc.run):
        hc.run.dir = job_dir


def _reset_between_jobs(env: dict) -> None:
    """Restore the environment and tear down torch.distributed so the next multirun job starts clean."""
    os.environ.clear()
    os.environ.update(env)
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _print_crash(exc: BaseException, debug: bool) -> None:
    """A task's unexpected exception: its traceback from the task entry on (all of it with --debug)."""
    tb = exc.__traceback__
    if not debug:
        entry = tb
        while entry is not None and entry.tb_frame.f_code.co_name != "_main":
            entry = entry.tb_next
        tb = entry or tb
    traceback.print_exception(type(exc), exc, tb)
    if not debug:
        print(f"\n(ldmkit {DEBUG_FLAG} ... or {FULL_ERROR}=1 shows the complete stack trace)", file=sys.stderr)

def run_task(task: str, command: str, args: list[str]) -> int:
    """Run ``ldmkit <command> <args>`` through Hydra; return the exit code (2 for bad input, 1 for a crash). A run
    that fails, or writes nothing into the dir Hydra made for it, leaves no run dir of its own behind
    (:func:`remove_unused_run_dir`)."""
    from ldmkit.errors import UserError

    if DEBUG_FLAG in args:
        args = [a for a in args if a != DEBUG_FLAG]
        os.environ[FULL_ERROR] = "1"
    try:
        overrides, flags = split_hydra_args(args, task)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    saved = sys.argv
    state = {"started": False, "argv0": os.path.abspath(saved[0]) if saved else "ldmkit", "command": command,
             "full_error": os.environ.get(FULL_ERROR), "debug": os.environ.get(FULL_ERROR) == "1"}
    main = _task_main(task, state)
    overrides = quote_text(quote_paths(quote_numeric_groups(drop_null_groups(overrides))))
    sys.argv = [f"ldmkit {command}", *overrides, RUN_DIR_CALLBACK, *flags]
    os.environ[FULL_ERROR] = "1"  # Hydra raises its errors to us (instead of printing them over many lines)
    watch: dict = {}
    _WATCHES.append(watch)
    code = EXIT_CRASH  # until the run says otherwise (also for a KeyboardInterrupt)
    try:
        main()
        code = 0
    except Exception as exc:  # Hydra's argument / config errors before any job ran, or a crash
        if state["started"] and not isinstance(exc, UserError):  # (a UserError of a Hydra callback is bad input)
            _print_crash(exc, state["debug"])
        else:
            if state["debug"]:
                traceback.print_exception(exc)
            print(f"error: {user_error_line(exc) if isinstance(exc, UserError) else hydra_error_line(exc)}",
                  file=sys.stderr)
            code = EXIT_USAGE
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        # Hydra exits 1 on a bad override / unknown group option before any job ran: that is bad input.
        if code == 1 and not state["started"]:
            code = EXIT_USAGE
    finally:
        del _WATCHES[next(i for i, w in enumerate(_WATCHES) if w is watch)]
        if code != 0 or (watch.get("before") is None and not watch.get("sweep")):
            remove_unused_run_dir(watch)
        sys.argv = saved
        set_env(FULL_ERROR, state["full_error"])
    return code
