"""Hand a subcommand's trailing arguments to a real ``@hydra.main`` entry (multirun, --cfg, -p, --help)."""

from __future__ import annotations

import importlib
import importlib.resources
import os
import re
import sys

EXIT_USAGE = 2


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
        pin_job_argv(state["argv0"], state["command"])
        try:
            module = importlib.import_module(f"ldmkit.tasks.{task}")
            module.run(cfg)
        except Exception as exc:  # noqa: BLE001 - only UserError is reported tersely
            from hydra.errors import InstantiationException
            from omegaconf.errors import MissingMandatoryValue

            from ldmkit.errors import UserError

            while isinstance(exc, InstantiationException) and isinstance(exc.__cause__, Exception):
                exc = exc.__cause__  # a UserError raised inside a constructor built from _target_

            if isinstance(exc, UserError | MissingMandatoryValue):
                print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
                raise SystemExit(EXIT_USAGE) from None
            raise
        finally:
            sys.argv = argv
            _reset_between_jobs(env)

    return _main


def pin_job_argv(argv0: str, command: str) -> None:
    """Make ``sys.argv`` re-run exactly this job in its own output dir: Lightning's DDP launcher starts the
    other ranks from ``sys.argv`` and ``hydra.run.dir`` (STACK_NOTES), also for a job of a multirun."""
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


# Config groups whose options are numbers (f=8): Hydra would parse them as ints, so quote them.
_NUMERIC_GROUP = re.compile(r"^([+~]*f)=([0-9][0-9,]*)$")


def quote_numeric_groups(args: list[str]) -> list[str]:
    """Rewrite ``f=8`` / ``f=1,2,4`` to ``f='8'`` / ``f='1','2','4'`` so Hydra sees group option names."""
    out = []
    for arg in args:
        m = _NUMERIC_GROUP.match(arg)
        out.append(f"{m[1]}=" + ",".join(f"'{v}'" for v in m[2].split(",") if v) if m else arg)
    return out


# Options whose values are paths or URLs: quoted for Hydra when they hold characters its grammar would read
# (braces of shard patterns '{00000..00099}', spaces, commas, '=', ...), unless the user quoted them already.
PATH_KEYS = ("dataset.urls", "dataset.val_urls", "dataset.path", "ae", "ckpt", "out", "config", "prompts_file",
             "layout", "image", "mask", "semantic", "images", "inception_weights", "reference", "cache_dir", "dir",
             "verify")
_PLAIN = re.compile(r"[\w/.+\-:@%]+", flags=re.ASCII)


def quote_value(key: str, value: str) -> str:
    """``key=value`` for Hydra, with ``value`` single-quoted when the override grammar would misread it."""
    if _PLAIN.fullmatch(value) or value[:1] in "'\"[" or not value:
        return f"{key}={value}"
    return f"{key}='" + value.replace("'", "\\'") + "'"


def quote_paths(args: list[str]) -> list[str]:
    """Quote the values of path/URL options (``dataset.urls=/d/{00000..00009}.tar`` works unquoted)."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        out.append(quote_value(key, value) if eq and key.lstrip("+") in PATH_KEYS else arg)
    return out


def run_task(task: str, command: str, args: list[str]) -> int:
    """Run ``ldmkit <command> <args>`` through Hydra; return the exit code (2 for bad input)."""
    saved = sys.argv
    state = {"started": False, "argv0": os.path.abspath(saved[0]) if saved else "ldmkit", "command": command}
    main = _task_main(task, state)
    sys.argv = [f"ldmkit {command}", *quote_paths(quote_numeric_groups(args))]
    try:
        main()
        code = 0
    except Exception as exc:  # noqa: BLE001 - Hydra's own argument errors, before any job ran
        if state["started"]:
            raise
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        code = EXIT_USAGE
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        # Hydra exits 1 on a bad override / unknown group option before any job ran: that is bad input.
        if code == 1 and not state["started"]:
            code = EXIT_USAGE
    finally:
        sys.argv = saved
    return code
