"""The paper presets (conf/experiment/, conf/unet/, conf/first_stage/compvis_*, conf/cond/bert*, conf/trainer/,
conf/debug/): they compose with Hydra, carry the figures of the paper's Tables 12, 13 and 15, and build models of
the released sizes. Models are built on the meta device (no memory, no weights); nothing trains here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ldmkit import configdoc
from ldmkit.runner import conf_dir
from ldmkit.tasks.train_ldm import _fill_cond_channels, _fill_unet, effective_lr

CONF = Path(conf_dir())

# The paper's figures per experiment: (table, global batch, learning rate, iterations, f, latent channels, |Z|).
# The rate is what the model trains with (CompVis scales base_learning_rate x batch x GPUs where scale_lr is on).
PAPER = {
    "celebahq_ldm4": ("12", 48, 9.6e-5, 410_000, 4, 3, 8192),
    "ffhq_ldm4": ("12", 42, 8.4e-5, 635_000, 4, 3, 8192),
    "churches_ldm8": ("12", 96, 5.0e-5, 500_000, 8, 4, None),
    "bedrooms_ldm4": ("12", 48, 9.6e-5, 1_900_000, 4, 3, 8192),
    "cin_ldm1": ("13", 7, 4.9e-5, 2_000_000, 1, 3, None),
    "cin_ldm2": ("13", 9, 6.3e-5, 2_000_000, 2, 2, 2048),
    "cin_ldm4": ("13", 40, 8.0e-5, 2_000_000, 4, 3, 8192),
    "cin_ldm8": ("13", 64, 6.4e-5, 2_000_000, 8, 4, 16384),
    "cin_ldm16": ("13", 112, 4.5e-5, 2_000_000, 16, 8, 16384),
    "cin_ldm32": ("13", 112, 4.5e-5, 2_000_000, 32, 32, 16384),
    "t2i_laion_ldm8": ("15", 680, 1.0e-4, 390_000, 8, 4, None),
    "layout_openimages_ldm4": ("15", 24, 4.8e-5, 4_400_000, 4, 3, 8192),
    "layout_coco_ldm8": ("15", 48, 4.8e-5, 170_000, 8, 4, 16384),
    "cin_ldm4_cfg": ("15", 1200, 1.0e-4, 178_000, 4, 3, 8192),
    "sr_imagenet_ldm4": ("15", 64, 6.4e-5, 860_000, 4, 3, 8192),
    "inpaint_places_ldm4": ("15", 128, 1.0e-6, 360_000, 4, 3, 8192),
    "semantic_landscapes_ldm8": ("15", 48, 4.8e-5, 360_000, 8, 4, 16384),
}
EXPERIMENTS = sorted(PAPER)

# Exact parameter counts where CompVis released the same model: (UNet, conditioner). The UNet counts are those of
# CompVis' openaimodel.UNetModel for the released configs (ldmkit's UNetModel has its exact state-dict layout, so
# the count follows from the config; the compat tests load CompVis state dicts into it with strict=True).
RELEASED = {
    "celebahq_ldm4": (274_056_163, None),  # models/ldm/celeba256
    "ffhq_ldm4": (274_056_163, None),  # models/ldm/ffhq256
    "bedrooms_ldm4": (274_056_163, None),  # models/ldm/lsun_beds256
    "churches_ldm8": (294_966_916, None),  # models/ldm/lsun_churches256
    "cin_ldm8": (394_984_196, 512_000),  # models/ldm/cin256: ClassEmbedder 1000 x 512
    "cin_ldm4_cfg": (400_920_579, 512_512),  # configs/latent-diffusion/cin256-v2: 1001 x 512 (+ null class)
    "t2i_laion_ldm8": (872_300_484, 581_994_042),  # txt2img-1p4B: UNet + BERTEmbedder(1280, 32)
    "layout_openimages_ldm4": (246_277_379, 58_858_496),  # layout2img-openimages256: + BERTEmbedder(512, 16)
    "sr_imagenet_ldm4": (113_622_563, 0),  # models/ldm/bsr_sr (the concatenated low-res image has no weights)
}

# ldmkit's counts for the other UNets (no release to compare with), as their YAML headers state them.
STATED = {
    "cin_ldm1": 396_835_971, "cin_ldm2": 390_888_578, "cin_ldm4": 400_920_579, "cin_ldm16": 395_002_632,
    "cin_ldm32": 395_113_248, "layout_coco_ldm8": 312_241_540, "inpaint_places_ldm4": 215_230_467,
    "semantic_landscapes_ldm8": 215_231_620,
}

# The paper's "Model Size" (Tab. 12 Nparams, Tab. 13, Tab. 15), in millions, and what it counts: the UNet and the
# trained conditioner; for super-resolution also the VQ-f4 first stage (Tab. 5/15's 169M = 113.6M + 55.3M).
MODEL_SIZE = {
    "celebahq_ldm4": 274, "ffhq_ldm4": 274, "churches_ldm8": 294, "bedrooms_ldm4": 274,
    "cin_ldm1": 396, "cin_ldm2": 391, "cin_ldm4": 391, "cin_ldm8": 395, "cin_ldm16": 395, "cin_ldm32": 395,
    "t2i_laion_ldm8": 1450, "layout_openimages_ldm4": 306, "layout_coco_ldm8": 345, "cin_ldm4_cfg": 395,
    "sr_imagenet_ldm4": 169, "inpaint_places_ldm4": 215, "semantic_landscapes_ldm8": 215,
}
WITH_FIRST_STAGE = {"sr_imagenet_ldm4"}

# CompVis' released first stages (models/first_stage_models/<name>/config.yaml): embed_dim, n_embed (None: KL),
# ch_mult, attn_resolutions, attn_type; all have ch 128, num_res_blocks 2, resolution 256, 3 image channels.
COMPVIS_AE = {
    "kl_f4": (3, None, [1, 2, 4], [], "vanilla"),
    "kl_f8": (4, None, [1, 2, 4, 4], [], "vanilla"),
    "kl_f16": (16, None, [1, 1, 2, 2, 4], [16], "vanilla"),
    "kl_f32": (64, None, [1, 1, 2, 2, 4, 4], [16, 8], "vanilla"),
    "vq_f4": (3, 8192, [1, 2, 4], [], "vanilla"),
    "vq_f4_noattn": (3, 8192, [1, 2, 4], [], "none"),
    "vq_f8": (4, 16384, [1, 2, 2, 4], [32], "vanilla"),
    "vq_f8_n256": (4, 256, [1, 2, 2, 4], [32], "vanilla"),
    "vq_f16": (8, 16384, [1, 1, 2, 2, 4], [16], "vanilla"),
}
# Their parameter counts without the training loss (loss.* keys), from CompVis' layout rule below; independent
# figures: 83,653,863 for the released kl-f8 (the issue's figure), Tab. 18's 55M for VQ-f4 and 68M for VQ-f8.
COMPVIS_AE_PARAMS = {
    "kl_f4": 55_312_063, "kl_f8": 83_653_863, "kl_f16": 69_610_963, "kl_f32": 103_880_131,
    "vq_f4": 55_322_782, "vq_f4_noattn": 53_219_486, "vq_f8": 67_717_295, "vq_f8_n256": 67_652_783,
    "vq_f16": 69_593_371,
}

NEW_FILES = [
    *[f"first_stage/compvis_{n}.yaml" for n in COMPVIS_AE], "cond/bert.yaml", "cond/bert_layout.yaml",
    *[f"experiment/{n}.yaml" for n in EXPERIMENTS], "trainer/cpu.yaml", "trainer/gpu.yaml",
    "trainer/ddp_multinode.yaml", "debug/fdr.yaml", "debug/overfit.yaml",
    *[f"unet/{n}.yaml" for n in (
        "uncond_ldm4", "churches_ldm8", "cin_ldm1", "cin_ldm2", "cin_ldm4", "cin_ldm8", "cin_ldm16", "cin_ldm32",
        "t2i_laion_ldm8", "t2i_v1_ldm4", "layout_openimages_ldm4", "layout_coco_ldm8", "sr_imagenet_ldm4",
        "inpaint_places_ldm4", "inpaint_big_ldm4", "semantic_landscapes_ldm8")],
]


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    """Hydra's compose API over the shipped conf/ for the whole module."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def _dataset_override(command: str, experiment: str) -> str:
    """The mandatory data location of the experiment's dataset: dataset.urls for shards, else dataset.path."""
    cfg = compose(command, overrides=[f"experiment={experiment}"])
    return "dataset.urls=/x" if "urls" in cfg.dataset.keys() else "dataset.path=/x"  # ??? values are not "in"


def _compose(command: str, experiment: str, *overrides: str) -> DictConfig:
    cfg = compose(command, overrides=[f"experiment={experiment}", _dataset_override(command, experiment), *overrides])
    OmegaConf.resolve(cfg)  # every interpolation (${dataset.resolution}, ${cond.n_embed}, ...) resolves
    return cfg


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _latent(first_stage: DictConfig) -> tuple[int, int]:
    """(f, latent channels) of a first-stage node."""
    if first_stage._target_.endswith("IdentityStage"):
        return 1, int(first_stage.in_channels)
    return 2 ** (len(first_stage.ch_mult) - 1), int(first_stage.embed_dim)


def _build(cfg: DictConfig) -> tuple[int, int, int]:
    """(UNet, conditioner, first stage) parameter counts of a composed config, built on the meta device with the
    UNet's in/out channels filled as train-ldm does (latent channels + the conditioner's concat channels)."""
    with torch.device("meta"):
        _fill_cond_channels(cfg, _latent(cfg.first_stage)[1])
        cond = instantiate(cfg.cond)
        _fill_unet(cfg, _latent(cfg.first_stage)[1], cond.concat_channels)
        unet = instantiate(cfg.unet)
        first_stage = instantiate(cfg.first_stage)
    return _count(unet), _count(cond), _count(first_stage)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_with_the_papers_figures(experiment):
    table, batch, lr, steps, f, channels, codes = PAPER[experiment]
    cfg = _compose("train_ldm", experiment)
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_\n") and f"Tab. {table}" in text.splitlines()[1]
    assert cfg.dataset.get("path", cfg.dataset.get("urls")) == "/x" and cfg.dataset.resolution == 256
    devices = int(cfg.trainer.devices) * int(cfg.trainer.get("num_nodes", 1))
    assert cfg.loader.batch_size * devices == batch
    assert effective_lr(cfg) == pytest.approx(lr, rel=1e-9)
    assert cfg.trainer.max_steps == steps
    assert (cfg.diffusion.schedule, cfg.diffusion.timesteps) == ("linear", 1000)
    assert 0 < cfg.diffusion.linear_start < cfg.diffusion.linear_end < 0.03 and cfg.ema.decay == 0.9999
    assert cfg.objective.timesteps == "uniform"  # the paper's; train-ldm defaults to logit_normal
    assert cfg.trainer.gradient_clip_val is None  # the paper's; train-ldm defaults to 1.0
    assert _latent(cfg.first_stage) == (f, channels)
    assert cfg.first_stage.get("n_embed") == codes
    assert cfg.cond.get("drop_prob", 0.0) == (0.1 if experiment in ("t2i_laion_ldm8", "cin_ldm4_cfg") else 0.0)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_with_train_ae(experiment):
    """train-ae experiment=NAME picks the preset's first stage and dataset (the UNet and cond nodes ride along)."""
    cfg = _compose("train_ae", experiment)
    assert _latent(cfg.first_stage) == PAPER[experiment][4:6]
    assert cfg.dataset.resolution == 256 and cfg.loss.rec == "l2" and "lr_schedule" not in cfg  # its own keys stay


def test_experiments_are_not_for_f_study():
    """f-study sweeps f with its own small settings: it has no experiment group, and forcing one names the UNet."""
    assert "experiment" not in compose("f_study") and "debug" not in compose("f_study")
    with pytest.raises(Exception, match="Could not override 'experiment'"):
        compose("f_study", overrides=["experiment=cin_ldm8", "dataset.path=/x"])
    with pytest.raises(Exception, match="Could not override 'unet'"):
        compose("f_study", overrides=["+experiment=cin_ldm8", "dataset.path=/x"])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_parameter_counts(experiment):
    unet, cond, first_stage = _build(_compose("train_ldm", experiment))
    released_unet, released_cond = RELEASED.get(experiment, (STATED.get(experiment), None))
    assert unet == released_unet and released_cond in (None, cond)
    size = unet + cond + (first_stage if experiment in WITH_FIRST_STAGE else 0)
    assert size == pytest.approx(MODEL_SIZE[experiment] * 1e6, rel=0.03), size


def test_layout_coco_counts_and_the_released_semantic_unet():
    # Tab. 15's COCO layout model (345M) with 8 transformer layers; Tab. 17's 16 would give 371M
    assert _build(_compose("train_ldm", "layout_coco_ldm8"))[:2] == (312_241_540, 33_651_712)
    # Tab. 15 says f=8 for the landscapes model; the released semantic_synthesis256 (and Sec. 4.3.2) use f=4
    assert _build(_compose("train_ldm", "semantic_landscapes_ldm8"))[:2] == (215_231_620, 546)
    released = _compose("train_ldm", "semantic_landscapes_ldm8", "first_stage=compvis_vq_f4", "cond.n_stages=2")
    assert _build(released)[:2] == (215_229_315, 546)  # SpatialRescaler's 1x1 conv 182 -> 3, no bias


@pytest.mark.parametrize(("overrides", "unet", "cond"), [
    (["unet=inpaint_big_ldm4", "cond=inpaint"], 387_245_827, 0),  # models/ldm/inpainting_big (Sec. 4.5: 387M)
    (["unet=t2i_v1_ldm4", "cond=bert", "cond.n_embed=640"], 403_623_939, 186_154_682),  # models/ldm/text2img256
])
def test_other_released_unets(overrides, unet, cond):
    """Released LDMs without an experiment of their own, on VQ-f4 latents (celebahq_ldm4's first stage)."""
    assert _build(_compose("train_ldm", "celebahq_ldm4", *overrides))[:2] == (unet, cond)


def test_conditioners_build_without_files():
    """BERT reads its vocab lazily and the layout model needs no class list: both build with nothing on disk."""
    cfg = _compose("train_ldm", "t2i_laion_ldm8")
    assert cfg.cond.vocab is None and cfg.cond.max_seq_len == 77 and cfg.unet.context_dim == 1280
    assert (cfg.cond.n_embed, cfg.cond.n_layer, cfg.cond.vocab_size, cfg.cond.key) == (1280, 32, 30522, "caption")
    with torch.device("meta"):
        assert instantiate(cfg.cond)._tokenizer is None  # the preset builds; the vocab waits for the first caption
    small = _compose("train_ldm", "t2i_laion_ldm8", "cond.n_embed=64", "cond.n_layer=1")
    cond = instantiate(small.cond)  # on the CPU, small: token ids run through it with no vocab anywhere
    assert cond._tokenizer is None and cond(torch.zeros(1, 77, dtype=torch.long)).context.shape == (1, 77, 64)
    cfg = _compose("train_ldm", "layout_openimages_ldm4")
    assert (cfg.cond.n_embed, cfg.cond.n_layer, cfg.cond.vocab_size, cfg.cond.max_seq_len) == (512, 16, 8192, 92)
    assert cfg.cond.classes is None and cfg.unet.context_dim == 512
    with torch.device("meta"):
        assert instantiate(cfg.cond).null(2).shape == (2, 92)


def _compvis_ae_params(embed_dim: int, n_embed: int | None, ch_mult: list[int], attn: list[int],
                       attn_type: str) -> int:
    """Parameters of CompVis' AutoencoderKL / VQModel (ldm/modules/diffusionmodules/model.py), counted from its
    layout rule: ch 128, 2 ResnetBlocks per level (+1 in the decoder), AttnBlocks where the side is in attn,
    mid block, conv in/out, quant_conv / post_quant_conv, codebook; z_channels = embed_dim; no temb; no loss."""
    ch, blocks, res, z = 128, 2, 256, embed_dim

    def conv(i, o, k):
        return i * o * k * k + o

    def resnet(i, o):
        return 2 * i + conv(i, o, 3) + 2 * o + conv(o, o, 3) + (conv(i, o, 1) if i != o else 0)

    def attn_block(c):
        return 2 * c + 4 * conv(c, c, 1) if attn_type == "vanilla" else 0

    mults = [1, *ch_mult]
    enc, cur = conv(3, ch, 3), res
    for i, m in enumerate(ch_mult):
        c_in = ch * mults[i]
        for _ in range(blocks):
            enc += resnet(c_in, ch * m) + (attn_block(ch * m) if cur in attn else 0)
            c_in = ch * m
        if i != len(ch_mult) - 1:
            enc, cur = enc + conv(c_in, c_in, 3), cur // 2
    top = ch * ch_mult[-1]
    mid = 2 * resnet(top, top) + attn_block(top)
    double = 2 if n_embed is None else 1
    enc += mid + 2 * top + conv(top, double * z, 3)
    dec, c_in = conv(z, top, 3) + mid, top
    for i in reversed(range(len(ch_mult))):
        for _ in range(blocks + 1):
            dec += resnet(c_in, ch * ch_mult[i]) + (attn_block(ch * ch_mult[i]) if cur in attn else 0)
            c_in = ch * ch_mult[i]
        if i:
            dec, cur = dec + conv(c_in, c_in, 3), cur * 2
    dec += 2 * c_in + conv(c_in, 3, 3)
    quant = conv(double * z, double * embed_dim, 1) + conv(embed_dim, z, 1) + (n_embed or 0) * embed_dim
    return enc + dec + quant


@pytest.mark.parametrize("name", sorted(COMPVIS_AE))
def test_compvis_first_stages_have_the_released_sizes(name):
    embed_dim, n_embed, ch_mult, attn, attn_type = COMPVIS_AE[name]
    cfg = compose("train_ae", overrides=[f"first_stage=compvis_{name}", "dataset.resolution=256"]).first_stage
    OmegaConf.resolve(cfg)
    assert (cfg.embed_dim, cfg.z_channels, cfg.get("n_embed"), list(cfg.ch_mult), list(cfg.attn_resolutions),
            cfg.attn_type) == (embed_dim, embed_dim, n_embed, ch_mult, attn, attn_type)
    assert (cfg.ch, cfg.num_res_blocks, cfg.resolution, cfg.in_channels, cfg.out_ch, cfg.dropout) == (
        128, 2, 256, 3, 3, 0.0)
    with torch.device("meta"):
        built = _count(instantiate(cfg))
    assert built == _compvis_ae_params(*COMPVIS_AE[name]) == COMPVIS_AE_PARAMS[name]
    paper = {"vq_f4": 55, "vq_f8": 68}.get(name)  # Tab. 18: "VQGAN-f-4 (ours, first stage) 55M", "VQGAN-f-8 68M"
    assert paper is None or round(built / 1e6) == paper


def test_compvis_first_stages_follow_the_dataset_resolution():
    cfg = compose("train_ae", overrides=["first_stage=compvis_vq_f8", "dataset=imagenet", "dataset.path=/x"])
    assert OmegaConf.to_container(cfg.first_stage, resolve=True)["resolution"] == 256


@pytest.mark.parametrize("command", ["train_ldm", "train_ae"])
def test_trainer_and_debug_presets_compose(command):
    def trainer(*overrides):
        return OmegaConf.to_container(compose(command, overrides=list(overrides)).trainer)

    default = trainer()
    assert set(default) <= set(trainer("trainer=cpu")) and trainer("trainer=cpu")["accelerator"] == "cpu"
    gpu = trainer("trainer=gpu")
    assert (gpu["accelerator"], gpu["devices"], gpu["precision"]) == ("gpu", 1, "bf16-mixed")
    multi = trainer("trainer=ddp_multinode")
    assert set(trainer("trainer=ddp")) <= set(multi)
    assert (multi["strategy"], multi["accelerator"], multi["num_nodes"] > 1) == ("ddp", "gpu", True)
    assert trainer("debug=fdr")["fast_dev_run"] is True
    overfit = trainer("debug=overfit")
    assert overfit["overfit_batches"] == 1 and overfit["max_steps"] > default["max_steps"]


def test_debug_and_command_line_win_over_an_experiment():
    cfg = _compose("train_ldm", "cin_ldm8", "debug=overfit", "trainer=cpu", "loader.batch_size=2")
    assert (cfg.trainer.overfit_batches, cfg.trainer.max_steps, cfg.trainer.accelerator) == (1, 2000, "cpu")
    assert cfg.loader.batch_size == 2 and cfg.unet.model_channels == 256  # the rest of the preset stays


def test_new_configs_comment_every_key():
    """--help and the generated docs read each key's trailing comment: every key of these files but _target_ has
    one, and configdoc's reader sees the keys PyYAML sees."""

    def flat(node: dict, prefix: str = "") -> list[str]:
        return [k for key, value in node.items() if key != "defaults"
                for k in [prefix + key, *(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [])]]

    for rel in NEW_FILES:
        group = rel.split("/")[0]
        prefix = f"{group}." if group in ("first_stage", "unet", "trainer") else ""  # not _global_ packages
        entries = configdoc.read_config(CONF, CONF / rel).entries
        assert [e.key.removeprefix(prefix) for e in entries] == flat(yaml.safe_load((CONF / rel).read_text())), rel
        assert all(e.description for e in entries if not e.key.endswith("_target_")), rel


def test_cli_prints_an_experiments_config():
    proc = run_cli("train-ldm", "experiment=cin_ldm8", "dataset.path=/x", "--cfg", "job")
    assert re.search(r"^  model_channels: 256$", proc.stdout, re.M) and "n_embed: 16384" in proc.stdout
