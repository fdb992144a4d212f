"""The ``ldmkit`` command line: one thin Typer command per subcommand, forwarding Hydra overrides."""

from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="Latent diffusion models from the command line. Every command takes Hydra overrides "
    "(key=value, group=option, -m for a sweep, --cfg job to print the config, --help for the groups).",
)

FORWARD = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.callback()
def global_options(
    debug: bool = typer.Option(False, "--debug", help="Full tracebacks for errors (same as HYDRA_FULL_ERROR=1)."),
) -> None:
    """Options for every command (given before it: ldmkit --debug train-ae ...)."""
    if debug:
        import os

        os.environ["HYDRA_FULL_ERROR"] = "1"


def _forward(task: str, command: str, args: list[str]) -> None:
    """Run the task through Hydra and exit with its code."""
    from ldmkit.runner import run_task

    raise typer.Exit(run_task(task, command, list(args)))


@app.command("train-ae", context_settings=FORWARD)
def train_ae(ctx: typer.Context) -> None:
    """Train the first-stage autoencoder; writes a model dir (config.yaml, model.safetensors, meta.json)."""
    _forward("train_ae", "train-ae", ctx.args)


@app.command("encode-dataset", context_settings=FORWARD)
def encode_dataset(
    ctx: typer.Context,
    verify: Optional[str] = typer.Option(None, "--verify", metavar="DIR", help="Check a latent-shard dir."),  # noqa: UP045
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes sharing the shards."),  # noqa: UP045
) -> None:
    """Encode a dataset with a first stage (ae=DIR) into webdataset latent shards + manifest.json (resumable)."""
    from ldmkit.runner import quote_value

    extra = ([quote_value("verify", verify)] if verify else []) + ([f"workers={workers}"] if workers else [])
    _forward("encode_dataset", "encode-dataset", [*ctx.args, *extra])


@app.command("train-ldm", context_settings=FORWARD)
def train_ldm(ctx: typer.Context) -> None:
    """Train a latent diffusion UNet on latent shards or images encoded on the fly; writes an LDM model dir."""
    _forward("train_ldm", "train-ldm", ctx.args)


@app.command("sample", context_settings=FORWARD)
def sample(ctx: typer.Context) -> None:
    """Sample images from an LDM model dir (ckpt=DIR): one PNG per sample plus grid.png."""
    _forward("sample", "sample", ctx.args)


@app.command("eval-fid", context_settings=FORWARD)
def eval_fid(
    ctx: typer.Context,
    samples: Optional[int] = typer.Option(None, "--samples", help="Number of images to generate/compare."),  # noqa: UP045
) -> None:
    """FID/IS/KID/precision-recall of an LDM's samples (ckpt=DIR) or a folder (images=DIR) vs a reference set;
    rFID/PSNR/SSIM of a first stage (ae=DIR)."""
    extra = [f"samples={samples}"] if samples is not None else []
    _forward("eval_fid", "eval-fid", [*ctx.args, *extra])


@app.command("f-study", context_settings=FORWARD)
def f_study(ctx: typer.Context) -> None:
    """The paper's f study: per f train-ae, encode-dataset, train-ldm, eval-fid (run as `-m f=1,2,4,8,16`)."""
    _forward("f_study", "f-study", ctx.args)


@app.command("report", context_settings=FORWARD)
def report(
    ctx: typer.Context,
    directory: Optional[str] = typer.Argument(None, metavar="DIR", help="An f-study out= dir."),  # noqa: UP045
) -> None:
    """Collect an f-study's jobs into DIR/report.md with the quality-vs-steps and quality-vs-throughput plots."""
    from ldmkit.runner import quote_value

    _forward("report", "report", [*([quote_value("dir", directory)] if directory else []), *ctx.args])


@app.command("info", context_settings=FORWARD)
def info(
    ctx: typer.Context,
    directory: Optional[str] = typer.Argument(None, metavar="DIR", help="A model, latent-shard, run or f-study dir."),  # noqa: UP045
) -> None:
    """Summarise a model dir, latent-shard dir, run dir or f-study dir: kind, f, latent shape, params, steps, first
    stage, metrics (json=true: the same facts as JSON). Writes nothing."""
    from ldmkit.runner import quote_value

    _forward("info", "info", [*([quote_value("dir", directory)] if directory else []), *ctx.args])


@app.command("import-compvis", context_settings=FORWARD)
def import_compvis(
    ctx: typer.Context,
    config: Optional[str] = typer.Argument(None, metavar="CONFIG.yaml", help="The CompVis OmegaConf YAML."),  # noqa: UP045
    ckpt: Optional[str] = typer.Argument(None, metavar="MODEL.ckpt", help="Its .ckpt or .safetensors."),  # noqa: UP045
) -> None:
    """Import a CompVis first stage (AutoencoderKL, VQModel or a LatentDiffusion's) as a first-stage model dir."""
    given = [a for a in (config, ckpt, *ctx.args) if a is not None]
    if {"--help", "-h", "--hydra-help"} & set(given):  # the positionals may have swallowed the flag
        _forward("import_compvis", "import-compvis", [a for a in given if a.startswith("-") or "=" in a])
    if ckpt is None:
        typer.echo("error: usage: ldmkit import-compvis CONFIG.yaml MODEL.ckpt [out=DIR] [overrides]: "
                   f"missing {'CONFIG.yaml and MODEL.ckpt' if config is None else 'MODEL.ckpt'}", err=True)
        raise typer.Exit(2)
    from ldmkit.runner import quote_value

    paths = [quote_value("config", config), quote_value("ckpt", ckpt)]
    _forward("import_compvis", "import-compvis", [*paths, *ctx.args])


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
