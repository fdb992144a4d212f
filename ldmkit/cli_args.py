"""The command line as Hydra must read it: quoted path and free-text values, numeric group options, Hydra's own
flags after the overrides, and one line for a flag no command has."""

from __future__ import annotations

import re

# Config groups whose options are numbers (f=8): Hydra would parse them as ints, so quote them.
_NUMERIC_GROUP = re.compile(r"^([+~]*f)=([0-9][0-9,]*)$")


def quote_numeric_groups(args: list[str]) -> list[str]:
    """Rewrite ``f=8`` / ``f=1,2,4`` to ``f='8'`` / ``f='1','2','4'`` so Hydra sees group option names."""
    out = []
    for arg in args:
        m = _NUMERIC_GROUP.match(arg)
        out.append(f"{m[1]}=" + ",".join(f"'{v}'" for v in m[2].split(",") if v) if m else arg)
    return out


NULL_GROUP_OPTIONS = {"lr_schedule": "constant"}  # group: its option meaning "none of the group" (a constant rate)
_GROUP_VALUES = re.compile(rf"^({'|'.join(NULL_GROUP_OPTIONS)})=([\w,]+)$")  # GROUP=a,b,... of those groups


def drop_null_groups(args: list[str]) -> list[str]:
    """Rewrite ``lr_schedule=null`` (also in a sweep list, ``lr_schedule=null,cosine``) to the group's option
    ``constant``: Hydra takes no null option for a group it has a default for."""
    out = []
    for arg in args:
        m = _GROUP_VALUES.match(arg)
        if m:
            arg = f"{m[1]}=" + ",".join(NULL_GROUP_OPTIONS[m[1]] if v == "null" else v for v in m[2].split(","))
        out.append(arg)
    return out


# Options whose values are paths or URLs: quoted for Hydra when they hold characters its grammar would read
# (braces of shard patterns '{00000..00099}', spaces, commas, '=', ...), unless the user quoted them already.
PATH_KEYS = ("dataset.urls", "dataset.val_urls", "dataset.path", "ae", "ckpt", "out", "config", "prompts_file",
             "layout", "image", "mask", "semantic", "images", "inception_weights", "reference", "cache_dir", "dir",
             "verify")
_PLAIN = re.compile(r"[\w/.+\-:@%]+", flags=re.ASCII)
_BEFORE_QUOTE = re.compile(r"(\\+)(?='|$)")  # backslashes Hydra would read as escaping the (closing) quote
_INTERPOLATION = re.compile(r"(\\*)\$\{")


def hydra_quote(text: str) -> str:
    """``text`` as a single-quoted Hydra value that Hydra reads back unchanged (quotes and the backslashes before
    them escaped, as its override grammar wants)."""
    return "'" + _BEFORE_QUOTE.sub(lambda m: m[1] * 2, text).replace("'", "\\'") + "'"


def verbatim(text: str) -> str:
    """``text`` as a Hydra value that reaches the task as typed: quoted, and ``${`` no interpolation."""
    return hydra_quote(_INTERPOLATION.sub(lambda m: m[1] * 2 + "\\${", text))


def quote_value(key: str, value: str) -> str:
    """``key=value`` for Hydra, with ``value`` single-quoted when the override grammar would misread it."""
    if _PLAIN.fullmatch(value) or value[:1] in "'\"[" or not value:
        return f"{key}={value}"
    return f"{key}={hydra_quote(value)}"


# Options whose values are free text: one verbatim string, whatever commas, '=', quotes or brackets it holds.
TEXT_KEYS = ("prompt", "negative_prompt")


def _hydra_string(value: str) -> bool:
    """Whether ``value`` is one whole quoted Hydra string (``'a, b'``, as Hydra's own docs tell to type it)."""
    if len(value) < 2 or value[0] not in "'\"" or value[-1] != value[0]:
        return False
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return isinstance(OverridesParser.create().parse_override(f"k={value}").value(), str)
    except HydraException:
        return False


def text_value(value: str) -> str:
    """A free-text option's value for Hydra: ``[...]`` stays a Hydra list, ``null`` none and a whole quoted Hydra
    string that string; anything else is one verbatim text (commas, '=', quotes, ``${`` included)."""
    if value.startswith("[") or value == "null" or _hydra_string(value):
        return value
    return verbatim(value)


def quote_text(args: list[str]) -> list[str]:
    """``prompt=a red circle, left of a blue square`` -> one prompt, not Hydra's "Ambiguous value" (TEXT_KEYS)."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        out.append(f"{key}={text_value(value)}" if eq and key.lstrip("+") in TEXT_KEYS else arg)
    return out


def quote_paths(args: list[str]) -> list[str]:
    """Quote the values of path/URL options (``dataset.urls=/d/{00000..00009}.tar`` works unquoted)."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        out.append(quote_value(key, value) if eq and key.lstrip("+") in PATH_KEYS else arg)
    return out


def _hydra_flags() -> dict[str, object]:
    """Hydra's own command-line flags (``-m``, ``--cfg``, ...) by option string -> their argparse action."""
    from hydra._internal.utils import get_args_parser

    return {s: action for action in get_args_parser()._actions for s in action.option_strings}


def _flag_action(name: str, flags: dict[str, object]):
    """The Hydra flag ``name`` means (argparse also takes a unique prefix of a long flag: ``--multi``), or None."""
    if name in flags:
        return flags[name]
    matches = {id(a): a for s, a in flags.items() if name.startswith("--") and len(name) > 3 and s.startswith(name)}
    return next(iter(matches.values())) if len(matches) == 1 else None


def unknown_flag_line(flag: str, value: str | None, config: str) -> str:
    """One line for a ``--flag`` the command does not have: the override it most likely means, else the rule."""
    import shlex

    from ldmkit import configdoc

    command = configdoc.command_name(config)
    try:
        hints = configdoc.flag_overrides(configdoc.load_catalog(), config, flag)
    except configdoc.ConfigDocError:
        hints = []
    rule = f"settings are KEY=VALUE overrides, `ldmkit {command} --help` lists them"
    if not hints:
        return f"{flag} is not an option of `ldmkit {command}`: {rule}"
    typed = [shlex.quote(h if value is None else h.partition("=")[0] + "=" + value) for h in hints]
    return f"{flag} is not an option of `ldmkit {command}`: type {' or '.join(typed)} ({rule})"


def split_hydra_args(args: list[str], config: str) -> tuple[list[str], list[str]]:
    """``(overrides, Hydra's flags with their values)`` of a command line, to hand Hydra the overrides first and
    its flags after (its parser takes the overrides as one run: ``seed=0 --cfg job samples=16`` would fail);
    a flag Hydra does not know, or a bad value of one, is a UserError in one line."""
    from ldmkit.errors import UserError

    flags = _hydra_flags()
    overrides: list[str] = []
    hydra: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("-") or arg == "-":
            overrides.append(arg)
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        action = _flag_action(name, flags)
        if action is None:
            typed = value if eq else rest[0] if rest and not rest[0].startswith("-") and "=" not in rest[0] else None
            raise UserError(unknown_flag_line(name, typed, config))
        choices = list(action.choices or [])
        if action.nargs == 0:
            if eq:
                raise UserError(f"{name} takes no value (got {arg})")
            hydra.append(name)
            continue
        if not eq and action.nargs == "?":
            value = rest.pop(0) if rest and rest[0] in choices else None
        elif not eq:
            if not rest or rest[0].startswith("-"):
                raise UserError(f"{name} needs a value" + (f": {', '.join(choices)}" if choices else ""))
            value = rest.pop(0)
        if value is not None and choices and value not in choices:
            raise UserError(f"{name} {value}: not one of {', '.join(choices)}")
        hydra += [name] if value is None else [name, value]
    return overrides, hydra
