"""Hand a subcommand's trailing arguments to a real ``@hydra.main`` entry (multirun, --cfg, -p, --help)."""

from __future__ import annotations

import difflib
import importlib
import importlib.resources
import os
import re
import sys
import traceback
from pathlib import Path

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
        except Exception as exc:  # noqa: BLE001 - only UserError is reported tersely
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


def _one_line(text: str) -> str:
    """A multi-line Hydra message as one line (without the config search path and the stack-trace hint)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("Config search path:"):
            break
        if line.strip() and not line.startswith("Set the environment variable"):
            lines.append(line.strip())
    return " ".join(lines)


def _sorted_options(options: list[str]) -> list[str]:
    """Group options in reading order: numbers by value (f=1, 2, 4 … 32), then names alphabetically."""
    return sorted(options, key=lambda o: (not o.isdigit(), int(o) if o.isdigit() else 0, o))


def _group_options(group: str) -> list[str]:
    """The option names of a shipped config group (its YAML files)."""
    folder = Path(conf_dir()) / group
    return [p.stem for p in folder.glob("*.yaml")] if folder.is_dir() else []


def _unknown_group_option(missing: str, options: list[str] | None) -> str:
    """``sampler=nope``: name the group's valid options (and the closest one)."""
    group, _, name = missing.rpartition("/")
    options = _sorted_options(list(options or _group_options(group)))
    if not options:
        return f"{group}={name}: no such config ({group}/{name}.yaml not found)"
    near = [] if name.isdigit() else difflib.get_close_matches(name, options, n=2, cutoff=0.6)
    hint = f" (did you mean {' or '.join(f'{group}={o}' for o in near)}?)" if near else ""
    return f"{group}={name} is not an option{hint}. Available options in '{group}': {', '.join(options)}"


def _config_paths(node: object, prefix: str = "") -> list[str]:
    """Every dotted key of a plain (to_container) config."""
    if not isinstance(node, dict):
        return []
    paths = []
    for key, value in node.items():
        paths += [f"{prefix}{key}", *_config_paths(value, f"{prefix}{key}.")]
    return paths


def _unknown_key(cause: Exception, message: str) -> str:
    """``trainer.max_stepz=3``: close matches anywhere in the config, the keys at that level, and ``+key=``."""
    from omegaconf import DictConfig, OmegaConf

    full_key, parent = str(cause.full_key), cause.parent_node
    where, _, leaf = full_key.rpartition(".")
    siblings = [str(k) for k in parent.keys() if not str(k).startswith("_")] if isinstance(parent, DictConfig) else []
    if not where:
        siblings = [k for k in siblings if k != "hydra"]
    root = OmegaConf.to_container(parent._get_root(), resolve=False) if isinstance(parent, DictConfig) else {}
    if not full_key.startswith("hydra."):
        root = {k: v for k, v in root.items() if k != "hydra"}
    paths = [p for p in _config_paths(root) if p != full_key]
    near = [p for p in paths if p.rpartition(".")[2] == leaf]
    near += [f"{where}.{k}" if where else k for k in difflib.get_close_matches(leaf, siblings, n=2, cutoff=0.6)]
    elsewhere = [p for p in paths if p.rpartition(".")[0] != where and not full_key.startswith(p + ".")]
    near += difflib.get_close_matches(full_key, elsewhere, n=2, cutoff=0.75)
    near = list(dict.fromkeys(near))[:3]
    parts = [f"{full_key} is not an option" + (f" (did you mean {' or '.join(near)}?)" if near else "")]
    if siblings:
        parts.append(f"the options {f'under {where}' if where else 'at the top level'} are: {', '.join(siblings)}")
    add = re.search(r"use (\+\S+)", message)
    if add:
        parts.append(f"use {add[1]} to add a new key")
    return "; ".join(parts)


def hydra_error_line(exc: Exception) -> str:
    """One informative line for an error Hydra raised while parsing the overrides or composing the config."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, MissingConfigException) and "/" in str(exc.missing_cfg_file or ""):
        return _unknown_group_option(str(exc.missing_cfg_file), exc.options)
    if isinstance(exc, OverrideParseException):
        return (f"cannot parse the override {exc.override!r}: {_one_line(exc.message).split(' See ')[0]} "
                "(quote a value holding special characters: key='a b,c')")
    cause = exc.__cause__
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and getattr(cause, "full_key", None):
        return _unknown_key(cause, str(exc))
    return _one_line(str(exc)) or type(exc).__name__


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
    """Run ``ldmkit <command> <args>`` through Hydra; return the exit code (2 for bad input, 1 for a crash)."""
    if DEBUG_FLAG in args:
        args = [a for a in args if a != DEBUG_FLAG]
        os.environ[FULL_ERROR] = "1"
    saved = sys.argv
    state = {"started": False, "argv0": os.path.abspath(saved[0]) if saved else "ldmkit", "command": command,
             "full_error": os.environ.get(FULL_ERROR), "debug": os.environ.get(FULL_ERROR) == "1"}
    main = _task_main(task, state)
    sys.argv = [f"ldmkit {command}", *quote_paths(quote_numeric_groups(args))]
    os.environ[FULL_ERROR] = "1"  # Hydra raises its errors to us (instead of printing them over many lines)
    try:
        main()
        code = 0
    except Exception as exc:  # noqa: BLE001 - Hydra's argument / config errors before any job ran, or a crash
        from ldmkit.errors import UserError

        if state["started"] and not isinstance(exc, UserError):  # (a UserError of a Hydra callback is bad input)
            _print_crash(exc, state["debug"])
            return EXIT_CRASH
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
        sys.argv = saved
        set_env(FULL_ERROR, state["full_error"])
    return code
