"""The ``ldmkit`` command line: one thin Typer command per subcommand, forwarding Hydra overrides."""

from __future__ import annotations

import importlib
from typing import NoReturn, Optional

import typer
from typer.core import TyperCommand

app = typer.Typer(
    add_completion=True,
    no_args_is_help=False,
    help="Latent diffusion models from the command line. Every command takes Hydra overrides "
    "(key=value, group=option, -m for a sweep, --cfg job to print the config); COMMAND --help lists its config "
    "groups and keys, `ldmkit configs` all of them.",
)

# Trailing args go to Hydra untouched; --help/-h is ours (the command's options + its config), --hydra-help Hydra's.
FORWARD = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["--help", "-h"]}


class ConfigCommand(TyperCommand):
    """A command forwarding to a Hydra task: its ``--help`` adds the task's config groups and keys read from
    ``conf/`` (ldmkit.configdoc), and shell completion offers ``group=option`` and ``key=`` overrides."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[KEY=VALUE | GROUP=OPTION]..."]

    @property
    def config(self) -> str:
        return (self.name or "").replace("-", "_")

    def format_help(self, ctx: typer.Context, formatter) -> None:
        super().format_help(ctx, formatter)
        from typer import core

        if core.HAS_RICH and self.rich_markup_mode is not None:  # Typer printed its panels: ours go below
            _print_config_panels(self.config)
        else:
            from ldmkit import configdoc

            formatter.write("\n" + configdoc.catalog_text(configdoc.load_catalog(), self.config))

    def shell_complete(self, ctx: typer.Context, incomplete: str) -> list:
        items = super().shell_complete(ctx, incomplete)
        if incomplete.startswith("-"):
            return items
        from ldmkit import configdoc

        command = next(c for c in type(self).__mro__ if c.__name__ == "Command")  # click's, or Typer's vendored one
        completion = importlib.import_module(command.__module__.rpartition(".")[0] + ".shell_completion")
        words = configdoc.override_completions(configdoc.load_catalog(), self.config)
        if ctx.args[-1:] == ["="] and len(ctx.args) >= 2:  # bash splits cond=cl at '=': complete the option only
            prefix = ctx.args[-2] + "="
            words = [(w.removeprefix(prefix), h) for w, h in words if w.startswith(prefix) and w != prefix]
        return items + [completion.CompletionItem(w, help=h or None) for w, h in words if w.startswith(incomplete)]


def _print_config_panels(config: str) -> None:
    """Typer-style panels: the command's config groups (default, choices), its keys, the shared configs' keys."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text
    from typer import rich_utils

    from ldmkit import configdoc

    console = rich_utils._get_rich_console() if hasattr(rich_utils, "_get_rich_console") else None
    if console is None:
        from rich.console import Console

        console = Console()
    try:
        catalog = configdoc.load_catalog()
    except configdoc.ConfigDocError as exc:  # a conf file this reader cannot parse: say so, keep the help
        console.print(Text(f" (config reference unavailable: {exc})", style="dim"))
        return
    border = getattr(rich_utils, "STYLE_OPTIONS_PANEL_BORDER", "dim")
    groups = catalog.configs[config].group_defaults()
    if groups:
        table = Table(show_header=True, header_style="dim", box=None, expand=True, padding=(0, 1), pad_edge=False)
        table.add_column("group", style="bold cyan", no_wrap=True)
        table.add_column("default", style="green", no_wrap=True)
        table.add_column("choices / description", ratio=1)
        for d in groups:
            cell = Text(" | ".join(catalog.options(d.group)))
            note = configdoc.group_note(d, catalog.options(d.group))
            if note:
                cell.append("\n" + note, style="dim")
            table.add_row(Text(d.group), Text(d.option), cell)
        console.print(Panel(table, title="Config groups: GROUP=OPTION", title_align="left", border_style=border))
    sections = configdoc.command_entries(catalog, config)
    chosen = configdoc.group_keys(catalog, config)
    panels = [("Config: KEY=VALUE", [catalog.configs[n].path for n, _ in sections[:1]],
               [e for _, entries in sections[:1] for e in entries]),
              ("Default options' keys: KEY=VALUE", [g.source.path for g in chosen],
               [e for g in chosen for e in (*g.entries, *g.other_entries())]),
              ("Shared config: KEY=VALUE", [catalog.configs[n].path for n, _ in sections[1:]],
               [e for _, entries in sections[1:] for e in entries])]
    for title, files, entries in panels:
        table = Table(show_header=False, box=None, expand=True, padding=(0, 1), pad_edge=False)
        table.add_column("key", style="bold cyan", no_wrap=True)
        table.add_column("default", style="green", max_width=24, overflow="fold")
        table.add_column("description", ratio=1)
        for e in [e for e in entries if _in_help(e)]:
            table.add_row(Text(e.key), Text(e.default), Text(e.description))  # Text: no markup
        if table.row_count:
            title = f"{title} (conf/: {', '.join(files)})"
            console.print(Panel(table, title=title, title_align="left", border_style=border))
    console.print(Text(" ldmkit configs GROUP: every key of a group's options (also in docs/config/)\n"
                       f" ldmkit {configdoc.command_name(config)} [overrides] --cfg job: the composed config\n"
                       " --hydra-help: Hydra's own flags (-m/--multirun, --cfg, -p, --info, ...)", style="dim"))


def _in_help(entry) -> bool:
    """Keys worth a row in --help: not Hydra's reserved _target_/_partial_, not a bare mapping without a comment."""
    return not entry.key.endswith(("._target_", "._partial_")) and not (entry.mapping and not entry.description)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"ldmkit {version('ldmkit')}")
        raise typer.Exit()


@app.callback()
def global_options(
    debug: bool = typer.Option(False, "--debug", help="Full tracebacks for errors (same as HYDRA_FULL_ERROR=1)."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the ldmkit version and exit."),
) -> None:
    """Options for every command (given before it: ldmkit --debug train-ae ...)."""
    if debug:
        import os

        os.environ["HYDRA_FULL_ERROR"] = "1"


def _forward(task: str, command: str, args: list[str]) -> None:
    """Run the task through Hydra and exit with its code."""
    from ldmkit.runner import run_task

    raise typer.Exit(run_task(task, command, list(args)))


@app.command("train-ae", cls=ConfigCommand, context_settings=FORWARD)
def train_ae(ctx: typer.Context) -> None:
    """Train the first-stage autoencoder; writes a model dir (config.yaml, model.safetensors, meta.json)."""
    _forward("train_ae", "train-ae", ctx.args)


@app.command("encode-dataset", cls=ConfigCommand, context_settings=FORWARD)
def encode_dataset(
    ctx: typer.Context,
    verify: Optional[str] = typer.Option(None, "--verify", metavar="DIR", help="Check a latent-shard dir."),  # noqa: UP045
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes sharing the shards."),  # noqa: UP045
) -> None:
    """Encode a dataset with a first stage (ae=DIR) into webdataset latent shards + manifest.json (resumable)."""
    from ldmkit.cli_args import quote_value

    extra = ([quote_value("verify", verify)] if verify else []) + ([f"workers={workers}"] if workers else [])
    _forward("encode_dataset", "encode-dataset", [*ctx.args, *extra])


@app.command("train-ldm", cls=ConfigCommand, context_settings=FORWARD)
def train_ldm(ctx: typer.Context) -> None:
    """Train a latent diffusion UNet on latent shards or images encoded on the fly; writes an LDM model dir."""
    _forward("train_ldm", "train-ldm", ctx.args)


def _usage_error(message: str) -> NoReturn:
    """Bad command-line use: one ``error:`` line, exit code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _alias_overrides(args: list[str], given: dict[str, tuple[str, str | None]]) -> list[str]:
    """``key=value`` of each alias flag given (``--seed 3`` -> ``seed=3``; given: flag -> (key, value or None));
    a key both given by its flag and as an override is an error."""
    typed = {a.partition("=")[0].lstrip("+") for a in args if "=" in a and not a.startswith("-")}
    out = []
    for flag, (key, value) in given.items():
        if value is None:
            continue
        if key in typed:
            _usage_error(f"{flag} and {key}= both set {key}: keep one")
        out.append(f"{key}={value}")
    return out


def _prompt_value(prompts: list[str] | None) -> str | None:
    """Repeated ``--prompt TEXT`` as one ``prompt=`` value for Hydra: each TEXT one verbatim prompt (a list for
    several)."""
    if not prompts:
        return None
    from ldmkit.cli_args import verbatim

    texts = [verbatim(p) for p in prompts]
    return texts[0] if len(texts) == 1 else "[" + ",".join(texts) + "]"


@app.command("sample", cls=ConfigCommand, context_settings=FORWARD)
def sample(
    ctx: typer.Context,
    prompt: Optional[list[str]] = typer.Option(  # noqa: UP045
        None, "--prompt", metavar="TEXT",
        help="One prompt, verbatim (commas, '=', quotes are text); repeat the option for several prompts."),
    negative_prompt: Optional[str] = typer.Option(  # noqa: UP045
        None, "--negative-prompt", metavar="TEXT", help="The negative prompt, verbatim (= negative_prompt=TEXT)."),
    seed: Optional[str] = typer.Option(None, "--seed", metavar="N", help="= seed=N"),  # noqa: UP045
    steps: Optional[str] = typer.Option(None, "--steps", metavar="N", help="= sampler.steps=N"),  # noqa: UP045
    guidance: Optional[str] = typer.Option(None, "--guidance", metavar="S", help="= guidance=S"),  # noqa: UP045
    n: Optional[str] = typer.Option(None, "-n", metavar="N", help="= n=N (samples per request)"),  # noqa: UP045
    out: Optional[str] = typer.Option(None, "--out", metavar="DIR", help="= out=DIR"),  # noqa: UP045
    ckpt: Optional[str] = typer.Option(None, "--ckpt", metavar="DIR", help="= ckpt=DIR"),  # noqa: UP045
) -> None:
    """Sample images from an LDM model dir (ckpt=DIR): one PNG per sample plus grid.png."""
    from ldmkit.cli_args import verbatim

    given = {"--prompt": ("prompt", _prompt_value(prompt)),
             "--negative-prompt": ("negative_prompt", None if negative_prompt is None else verbatim(negative_prompt)),
             "--seed": ("seed", seed), "--steps": ("sampler.steps", steps), "--guidance": ("guidance", guidance),
             "-n": ("n", n), "--out": ("out", out), "--ckpt": ("ckpt", ckpt)}
    _forward("sample", "sample", [*_alias_overrides(ctx.args, given), *ctx.args])


@app.command("eval-fid", cls=ConfigCommand, context_settings=FORWARD)
def eval_fid(
    ctx: typer.Context,
    samples: Optional[int] = typer.Option(None, "--samples", help="Number of images to generate/compare."),  # noqa: UP045
) -> None:
    """FID/IS/KID/precision-recall of an LDM's samples (ckpt=DIR) or a folder (images=DIR) vs a reference set;
    rFID/PSNR/SSIM of a first stage (ae=DIR)."""
    extra = [f"samples={samples}"] if samples is not None else []
    _forward("eval_fid", "eval-fid", [*ctx.args, *extra])


@app.command("f-study", cls=ConfigCommand, context_settings=FORWARD)
def f_study(ctx: typer.Context) -> None:
    """The paper's f study: per f train-ae, encode-dataset, train-ldm, eval-fid (run as `-m f=1,2,4,8,16`)."""
    _forward("f_study", "f-study", ctx.args)


@app.command("report", cls=ConfigCommand, context_settings=FORWARD)
def report(
    ctx: typer.Context,
    directory: Optional[str] = typer.Argument(None, metavar="DIR", help="An f-study out= dir."),  # noqa: UP045
) -> None:
    """Collect an f-study's jobs into DIR/report.md with the quality-vs-steps and quality-vs-throughput plots."""
    from ldmkit.cli_args import quote_value

    _forward("report", "report", [*([quote_value("dir", directory)] if directory else []), *ctx.args])


@app.command("info", cls=ConfigCommand, context_settings=FORWARD)
def info(
    ctx: typer.Context,
    directory: Optional[str] = typer.Argument(None, metavar="DIR", help="A model, latent-shard, run or f-study dir."),  # noqa: UP045
) -> None:
    """Summarise a model dir, latent-shard dir, run dir or f-study dir: kind, f, latent shape, params, steps, first
    stage, metrics (json=true: the same facts as JSON). Writes nothing."""
    from ldmkit.cli_args import quote_value

    _forward("info", "info", [*([quote_value("dir", directory)] if directory else []), *ctx.args])


@app.command("import-compvis", cls=ConfigCommand, context_settings=FORWARD)
def import_compvis(
    ctx: typer.Context,
    config: Optional[str] = typer.Argument(None, metavar="CONFIG.yaml", help="The CompVis OmegaConf YAML."),  # noqa: UP045
    ckpt: Optional[str] = typer.Argument(None, metavar="MODEL.ckpt", help="Its .ckpt or .safetensors."),  # noqa: UP045
) -> None:
    """Import any released CompVis model, a first stage or a whole LDM: its .ckpt + YAML become a model dir."""
    given = [a for a in (config, ckpt, *ctx.args) if a is not None]
    if "--hydra-help" in given:  # the positionals may have swallowed the flag
        _forward("import_compvis", "import-compvis", [a for a in given if a.startswith("-") or "=" in a])
    if ckpt is None:
        typer.echo("error: usage: ldmkit import-compvis CONFIG.yaml MODEL.ckpt [out=DIR] [overrides]: "
                   f"missing {'CONFIG.yaml and MODEL.ckpt' if config is None else 'MODEL.ckpt'}", err=True)
        raise typer.Exit(2)
    from ldmkit.cli_args import quote_value

    paths = [quote_value("config", config), quote_value("ckpt", ckpt)]
    _forward("import_compvis", "import-compvis", [*paths, *ctx.args])


def _config_names(incomplete: str) -> list[str]:
    from ldmkit import configdoc

    return [n for n in configdoc.known_names(configdoc.load_catalog()) if n.startswith(incomplete)]


@app.command("configs")
def configs(
    name: Optional[str] = typer.Argument(  # noqa: UP045
        None, metavar="[GROUP|COMMAND]", autocompletion=_config_names,
        help="One config group (dataset), command (train-ldm), shared config (common) or option (sampler/ddim)."),
) -> None:
    """List the config groups with their options, and every key with its default and description (read from conf/;
    also in docs/config/)."""
    from ldmkit import configdoc

    catalog = configdoc.load_catalog()
    try:
        text = configdoc.catalog_text(catalog, name)
    except KeyError:
        typer.echo(f"error: no config group, command or config named {name!r}; "
                   f"known: {', '.join(configdoc.known_names(catalog))} (or GROUP/OPTION)", err=True)
        raise typer.Exit(2) from None
    typer.echo(text, nl=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
