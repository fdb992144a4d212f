"""The optimisers and rate schedules as config (optim=, lr_schedule=): today's numbers by default, another optimiser
by override, the schedules' rates, a missing package in one line, and resuming restores their state."""

from __future__ import annotations

import importlib.util
import math

import pytest
import pytorch_lightning as pl
import torch
from conftest import ldmkit_inprocess
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from test_modules import tiny_ldm
from torch.utils.data import DataLoader

from ldmkit.cli_args import drop_null_groups
from ldmkit.errors import UserError
from ldmkit.models.autoencoder import AutoencoderKL
from ldmkit.models.discriminator import NLayerDiscriminator
from ldmkit.models.losses import AutoencoderLoss
from ldmkit.runner import conf_dir
from ldmkit.tasks.train_ldm import effective_lr
from ldmkit.training import optim
from ldmkit.training.autoencoder_module import AutoencoderModule
from ldmkit.training.ldm_module import LDMModule

HYPER = ("lr", "betas", "eps", "weight_decay", "amsgrad", "fused")


def _cfg(task: str, *overrides: str) -> DictConfig:
    """The composed config of ``task`` with ``overrides``."""
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose(task, overrides=list(overrides))


def _ldm_module(*overrides: str) -> LDMModule:
    """An LDMModule on a tiny LDM built as train-ldm does from the composed config."""
    cfg = _cfg("train_ldm", *overrides)
    return LDMModule(tiny_ldm(), *optim.from_config(cfg.optim, cfg.get("lr_schedule"), lr=effective_lr(cfg)))


def _ae_module(*overrides: str) -> AutoencoderModule:
    """An AutoencoderModule (tiny KL autoencoder, discriminator on from step 1) from train-ae's composed config."""
    cfg = _cfg("train_ae", *overrides)
    torch.manual_seed(0)
    ae = AutoencoderKL(embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 2), resolution=16)
    loss = AutoencoderLoss(discriminator=NLayerDiscriminator(ndf=8, n_layers=2), disc_start=1)
    return AutoencoderModule(ae, loss, *optim.from_config(cfg.optim, cfg.get("lr_schedule")))


def _hyper(opt: torch.optim.Optimizer) -> dict:
    """The optimiser's class and hyper-parameters."""
    return {"class": type(opt), **{k: opt.defaults[k] for k in HYPER}}


def test_defaults_are_the_optimisers_hard_coded_before():
    params = [torch.nn.Parameter(torch.zeros(1))]
    ldm_opt = _ldm_module().configure_optimizers()
    assert _hyper(ldm_opt) == _hyper(torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, fused=True))
    # train-ae lr_schedule=null: the command line rewrites it to the option `constant`, also in a sweep list
    assert drop_null_groups(["lr_schedule=null", "lr_schedule=cosine,null"]) == [
        "lr_schedule=constant", "lr_schedule=cosine,constant"]
    module = _ae_module("lr_schedule=constant")
    assert module.lr_schedule is None
    ae_opts = module.configure_optimizers()
    assert [_hyper(o) for o in ae_opts] == [_hyper(torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.9), fused=True))] * 2
    owners = [module.ae, module.loss.discriminator]
    assert [o.param_groups[0]["params"] for o in ae_opts] == [list(m.parameters()) for m in owners]


def test_train_ae_decays_both_rates_to_zero_by_its_last_step_by_default():
    opts, schedules = _ae_module("trainer.max_steps=40").configure_optimizers()
    rates = []
    for _ in range(40):
        for opt, schedule in zip(opts, schedules, strict=True):
            opt.step()
            schedule.step()
        rates.append([o.param_groups[0]["lr"] for o in opts])
    assert rates[19] == pytest.approx([0.5e-3] * 2) and rates[-1] == [0.0, 0.0]


def test_a_null_schedule_on_the_command_line_means_a_constant_rate():
    code, output = ldmkit_inprocess(["train-ae", "lr_schedule=null", "--cfg", "job"])
    assert code == 0 and "\nlr_schedule: null\n" in output and "rec: l2" in output  # the option `constant`


@pytest.mark.parametrize("override", ["optim=adam", "optim._target_=torch.optim.Adam"])
def test_an_override_picks_another_optimiser(override):
    opt = _ldm_module(override, "optim.lr=1e-3", "optim.weight_decay=0.1").configure_optimizers()
    assert _hyper(opt) == {"class": torch.optim.Adam, "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                           "weight_decay": 0.1, "amsgrad": False, "fused": True}


def test_scale_lr_multiplies_the_rate_the_optimiser_gets():
    opt = _ldm_module("optim.lr=1e-4", "optim.scale_lr=true", "loader.batch_size=8").configure_optimizers()
    assert type(opt) is torch.optim.AdamW and opt.defaults["lr"] == pytest.approx(8e-4)


def _rates(schedule_overrides: list[str], steps: list[int]) -> list[float]:
    """The learning rate of train-ldm's optimiser after each of ``steps`` training steps."""
    config = _ldm_module("optim.lr=1e-3", *schedule_overrides).configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    opt, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = {0: opt.param_groups[0]["lr"]}
    for step in range(1, max(steps) + 1):
        opt.step()  # no gradients: nothing moves, but the schedule sees the optimiser stepped first
        schedule.step()
        rates[step] = opt.param_groups[0]["lr"]
    return [rates[s] for s in steps]


def test_cosine_schedule_warms_up_then_decays():
    rates = _rates(["lr_schedule=cosine", "lr_schedule.warmup_steps=10", "lr_schedule.min_factor=0.1",
                    "trainer.max_steps=110"], [0, 5, 10, 35, 60, 110, 150])
    cos = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25))  # 25 of 100 decay steps
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 1e-3 * cos, 0.55e-3, 1e-4, 1e-4], rel=1e-9, abs=1e-15)


def test_warmup_schedule_ramps_then_holds():
    rates = _rates(["lr_schedule=warmup", "lr_schedule.start_factor=0.25", "lr_schedule.total_iters=4"], [0, 2, 4, 9])
    assert rates == pytest.approx([2.5e-4, 6.25e-4, 1e-3, 1e-3], rel=1e-9)


def test_no_schedule_keeps_the_optimiser_alone():
    assert isinstance(_ldm_module().configure_optimizers(), torch.optim.AdamW)


def test_a_missing_optimiser_package_is_one_line(tmp_path):
    code, output = ldmkit_inprocess(["train-ae", "optim._target_=nonexistent_pkg.optim.Foo", f"out={tmp_path / 'r'}"])
    assert code == 2
    assert output.strip() == ("error: optim._target_=nonexistent_pkg.optim.Foo needs the nonexistent_pkg package: "
                              "pip install nonexistent_pkg")
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(importlib.util.find_spec("lion_pytorch") is not None, reason="lion-pytorch is installed")
def test_an_uninstalled_option_names_its_pip_package():
    with pytest.raises(UserError, match=r"^optim._target_=lion_pytorch.Lion needs the lion-pytorch package: "
                                        r"pip install lion-pytorch$"):
        _ldm_module("optim=lion")


@pytest.mark.parametrize(("override", "match"), [
    ("+optim.foo=1", r"^optim: AdamW.__init__\(\) got an unexpected keyword argument 'foo'$"),
    ("optim._target_=torch.optim.Nope", r"^optim._target_=torch.optim.Nope: torch.optim has no Nope$"),
    ("lr_schedule=warmup", r"^lr_schedule: Starting multiplicative factor"),
])
def test_bad_optimiser_or_schedule_arguments_are_one_line(override, match):
    extra = ["lr_schedule.start_factor=0"] if override.startswith("lr_schedule") else []
    with pytest.raises(UserError, match=match):
        _ldm_module(override, *extra)


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) * 2 - 1}


def _fit(module: pl.LightningModule, steps: int, ckpt_path=None) -> pl.Trainer:
    """Lightning fit of ``module`` to ``steps`` training steps (resuming from ``ckpt_path``, weights-only)."""
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, DataLoader(_Images(), batch_size=2), ckpt_path=ckpt_path, weights_only=True)
    return trainer


def test_resume_restores_both_optimisers_and_their_schedules(tmp_path, one_thread):
    schedule = ["lr_schedule=cosine", "lr_schedule.warmup_steps=2", "trainer.max_steps=6", "optim.lr=1e-3"]
    _fit(module := _ae_module(*schedule), 2).save_checkpoint(tmp_path / "last.ckpt")
    _fit(resumed := _ae_module(*schedule), 4, ckpt_path=tmp_path / "last.ckpt")
    factor = optim.WarmupCosine(warmup_steps=2, total_steps=6)
    for opt, sched, updates in zip(resumed.optimizers(use_pl_optimizer=False), resumed.lr_schedulers(), (4, 3),
                                   strict=True):
        assert sched.last_epoch == updates  # the discriminator's schedule follows its own updates (from step 1)
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * factor(updates), rel=1e-12)
        assert int(opt.state_dict()["state"][0]["step"]) == updates  # Adam's moments went on, not restarted
    assert module.global_step == 2 and resumed.global_step == 4


def test_an_extended_cosine_run_follows_the_longer_curve(tmp_path, one_thread):
    _fit(_ae_module("trainer.max_steps=2"), 2).save_checkpoint(tmp_path / "last.ckpt")
    _fit(resumed := _ae_module("trainer.max_steps=4"), 3, ckpt_path=tmp_path / "last.ckpt")
    (sched, _) = resumed.lr_schedulers()
    assert sched.last_epoch == 3 and sched.get_last_lr() == pytest.approx([1e-3 * 0.5 * (1 + math.cos(0.75 * math.pi))])

