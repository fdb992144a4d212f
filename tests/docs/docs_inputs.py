"""Small stand-ins for the files the docs' examples read (image folders, img2dataset shards, prompt and layout
files, CompVis checkpoints, Inception weights), keyed by the path the docs use. ``ensure_inputs(line, root)``
creates every input a command line mentions that does not exist yet under ``root``."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def _shapes(n: int, resolution: int, seed: int = 3) -> list[tuple[Image.Image, str, str]]:
    """``n`` shapes images (PIL), their captions and class names."""
    from ldmkit.data.shapes import ShapesDataset, class_name

    ds = ShapesDataset(size=n, resolution=resolution, seed=seed)
    out = []
    for i in range(n):
        item = ds[i]
        pixels = ((item["image"].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        out.append((Image.fromarray(pixels), item["caption"], class_name(int(item["class_label"]))))
    return out


def image_folder(path: Path) -> None:
    """``data/images``: 24 PNGs (48 px) in one sub-folder per colour (the classes), a ``<stem>.txt`` caption next
    to each, and one broken file (counted and skipped)."""
    for i, (image, caption, name) in enumerate(_shapes(24, 48)):
        folder = path / name.split()[0]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(caption + "\n")
    (path / "red" / "broken.png").parent.mkdir(parents=True, exist_ok=True)
    (path / "red" / "broken.png").write_bytes(b"not an image")


def shards(path: Path, count: int = 4, per_shard: int = 8) -> None:
    """``data/shards/00000.tar`` ...: img2dataset's webdataset layout (``<key>.jpg`` + ``.txt`` + ``.json``)."""
    path.mkdir(parents=True, exist_ok=True)
    items = _shapes(count * per_shard, 48, seed=4)
    for s in range(count):
        with tarfile.open(path / f"{s:05d}.tar", "w") as tar:
            for j in range(per_shard):
                image, caption, _ = items[s * per_shard + j]
                key = f"{s:05d}{j:04d}"
                buf = io.BytesIO()
                image.save(buf, "JPEG", quality=95)
                meta = json.dumps({"key": key, "caption": caption, "width": 48, "height": 48})
                for suffix, data in (("jpg", buf.getvalue()), ("txt", caption.encode()), ("json", meta.encode())):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def prompts(path: Path) -> None:
    """``prompts.txt``: one prompt per line."""
    path.write_text("a red circle\na blue square above a green triangle\n")


def layout(path: Path) -> None:
    """``boxes.yaml``: one layout of two boxes (image fractions)."""
    path.write_text("- {box: [0.1, 0.1, 0.5, 0.5], label: red circle}\n"
                    "- {box: [0.5, 0.4, 0.9, 0.9], label: blue square}\n")


def semantic_map(path: Path) -> None:
    """``map.png``: a 32 px label map (mode L): 0 = background, class c = c + 1."""
    labels = np.zeros((32, 32), dtype=np.uint8)
    labels[4:16, 4:16] = 1  # class 0 (red circle)
    labels[18:30, 14:30] = 9  # class 8
    Image.fromarray(labels, mode="L").save(path)


def low_res(path: Path) -> None:
    """``low.png``: an 8 px image (the sr models upsample by 4)."""
    _shapes(1, 8, seed=5)[0][0].save(path)


def photo(path: Path) -> None:
    """``photo.png``: a 32 px image to inpaint."""
    _shapes(1, 32, seed=6)[0][0].save(path)


def mask(path: Path) -> None:
    """``mask.png``: white = the region to fill."""
    m = np.zeros((32, 32), dtype=np.uint8)
    m[8:24, 8:24] = 255
    Image.fromarray(m, mode="L").save(path)


# --- CompVis checkpoints (random weights, the reference key layout; see tests/compat/) ---

KL_F8 = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 4, 4],
             num_res_blocks=1, attn_resolutions=[], dropout=0.0)
VQ_F4 = dict(double_z=False, z_channels=3, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 4],
             num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def _random_state(module, seed: int) -> dict:
    """Random weights for every entry of a module's state dict."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {k: 0.05 * torch.randn(v.shape, generator=gen) for k, v in module.state_dict().items()}


def _write_yaml(path: Path, config: dict) -> None:
    """A CompVis OmegaConf YAML."""
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))


def compvis_kl_f8(folder: Path) -> None:
    """``models/kl-f8/{config.yaml,model.ckpt}``: a CompVis AutoencoderKL f=8 (channels shrunk) as a Lightning
    checkpoint, with training-only ``loss.*`` keys as the published ones have."""
    import torch

    from ldmkit.models.autoencoder import AutoencoderKL

    folder.mkdir(parents=True, exist_ok=True)
    ae = AutoencoderKL(embed_dim=4, **{k: v for k, v in KL_F8.items() if k != "double_z"})
    state = {**_random_state(ae, 0), "loss.logvar": torch.zeros(())}
    torch.save({"epoch": 1, "global_step": 100, "state_dict": state}, folder / "model.ckpt")
    _write_yaml(folder / "config.yaml", {"model": {
        "base_learning_rate": 4.5e-6, "target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "monitor": "val/rec_loss", "embed_dim": 4, "ddconfig": KL_F8, "lossconfig": {
                "target": "ldm.modules.losses.LPIPSWithDiscriminator",
                "params": {"disc_start": 50001, "kl_weight": 1.0e-6, "disc_weight": 0.5}}}}})


def compvis_cin(folder: Path) -> None:
    """``models/cin256-v2/{config.yaml,model.ckpt}``: a CompVis class-conditional LatentDiffusion in the form of
    cin256-v2 (VQ f=4 first stage, ClassEmbedder with 1001 rows + crossattn, EMA shadow), shrunk."""
    import torch

    from ldmkit.diffusion.schedule import NoiseSchedule
    from ldmkit.models.unet import UNetModel
    from ldmkit.models.vq import VQModel

    folder.mkdir(parents=True, exist_ok=True)
    unet_args = dict(in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[1, 2], num_res_blocks=1,
                     channel_mult=[1, 2], num_head_channels=16, use_spatial_transformer=True, transformer_depth=1,
                     context_dim=64)
    unet = _random_state(UNetModel(**unet_args), 1)
    vq = _random_state(VQModel(embed_dim=3, n_embed=64, **{k: v for k, v in VQ_F4.items() if k != "double_z"}), 2)
    state = {
        **{f"model.diffusion_model.{k}": v for k, v in unet.items()},
        **{"model_ema." + ("diffusion_model." + k).replace(".", ""): v for k, v in unet.items()},
        "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(10, dtype=torch.int),
        **{f"first_stage_model.{k}": v for k, v in vq.items()},
        "cond_stage_model.embedding.weight": 0.05 * torch.randn(1001, 64, generator=torch.Generator().manual_seed(3)),
        "betas": NoiseSchedule("linear", 1000, 0.0015, 0.0195).betas.double(),
    }
    torch.save({"epoch": 1, "global_step": 100, "state_dict": state}, folder / "model.ckpt")
    _write_yaml(folder / "config.yaml", {"model": {
        "base_learning_rate": 1.0e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
            "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "first_stage_key": "image",
            "cond_stage_key": "class_label", "image_size": 8, "channels": 3, "cond_stage_trainable": True,
            "conditioning_key": "crossattn",
            "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                            "params": {"image_size": 8, **unet_args}},
            "first_stage_config": {"target": "ldm.models.autoencoder.VQModelInterface", "params": {
                "embed_dim": 3, "n_embed": 64, "ddconfig": VQ_F4, "lossconfig": {"target": "torch.nn.Identity"}}},
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.ClassEmbedder",
                                  "params": {"n_classes": 1001, "embed_dim": 64, "key": "class_label"}}}}})


def compvis_zoo(path: Path, name: str, ckpt: str | None = "model.ckpt", config: bool = True) -> None:
    """A released CompVis model, shrunk (``tests/fixtures/compat/zoo/<name>``): ``path`` is a folder getting
    its config.yaml and checkpoint, or (``ckpt=None``) the YAML file itself."""
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "compat"))
    import zoo

    if ckpt is None:
        shutil.copy(zoo.ZOO / name / "config.yaml", path)
        return
    path.mkdir(parents=True, exist_ok=True)
    if config:
        shutil.copy(zoo.ZOO / name / "config.yaml", path / "config.yaml")
    zoo.write_checkpoint(name, path / ckpt)


BERT_WORDS = ["a", "painting", "of", "virus", "monster", "playing", "guitar", "red", "bus", "in", "the", "snow"]


def bert_vocab(path: Path) -> None:
    """``bert/vocab.txt``: a small WordPiece vocab in BERT's layout ([PAD] first, then [UNK] [CLS] [SEP] [MASK])."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS, "##s"]) + "\n")


def oi_classes(path: Path) -> None:
    """``oi_classes.txt``: an OpenImages-style class list, one name per line in category order."""
    path.write_text("\n".join(["Man", "Car", "Tree", "Dog", "Boat", "Building"]) + "\n")


def oi_boxes(path: Path) -> None:
    """``oi_boxes.yaml``: a layout with OpenImages class names (and one flagged box)."""
    path.write_text("- {box: [0.05, 0.4, 0.6, 0.95], label: Car}\n"
                    "- {box: [0.5, 0.05, 0.95, 0.7], label: Tree, group: true}\n")


def coco_stuff_map(path: Path) -> None:
    """``landscape_seg.png``: a 32 px COCO-stuff label map (values 0..181 are the labels)."""
    labels = np.full((32, 32), 156, dtype=np.uint8)  # sky
    labels[20:] = 123  # grass
    labels[12:24, 8:16] = 168  # tree
    Image.fromarray(labels, mode="L").save(path)


class _RunsCode:
    """Unpickling this calls ``print``: what a malicious checkpoint does (with something worse than print)."""

    def __reduce__(self):
        return print, ("this checkpoint ran code",)


def evil_checkpoint(path: Path) -> None:
    """``evil.ckpt``: a Lightning-style checkpoint whose unpickling would run code (ldmkit must refuse it)."""
    import torch

    torch.save({"state_dict": {}, "payload": _RunsCode()}, path)


def inception(path: Path, stand_in: Path) -> None:
    """``models/weights-inception-...pth``: the random-weight Inception stand-in (never a real FID)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(stand_in)


# path (relative to the docs' working dir) -> builder(absolute path, stand-ins)
INPUTS: dict[str, Callable[[Path, dict], None]] = {
    "data/images": lambda p, s: image_folder(p),
    "data/shards": lambda p, s: shards(p),
    "prompts.txt": lambda p, s: prompts(p),
    "boxes.yaml": lambda p, s: layout(p),
    "map.png": lambda p, s: semantic_map(p),
    "low.png": lambda p, s: low_res(p),
    "photo.png": lambda p, s: photo(p),
    "mask.png": lambda p, s: mask(p),
    "models/kl-f8": lambda p, s: compvis_kl_f8(p),
    "configs/latent-diffusion/txt2img-1p4B-eval.yaml": lambda p, s: compvis_zoo(p, "ldm_txt2img-1p4B-eval", None),
    "models/ldm/text2img-large": lambda p, s: compvis_zoo(p, "ldm_txt2img-1p4B-eval", config=False),
    "models/ldm/layout2img-openimages256": lambda p, s: compvis_zoo(p, "ldm_layout2img-openimages256"),
    "models/ldm/bsr_sr": lambda p, s: compvis_zoo(p, "ldm_bsr_sr"),
    "models/first_stage_models/vq-f4": lambda p, s: compvis_zoo(p, "ae_vq-f4"),
    "models/ldm/inpainting_big": lambda p, s: compvis_zoo(p, "ldm_inpainting_big", "last.ckpt"),
    "models/ldm/semantic_synthesis256": lambda p, s: compvis_zoo(p, "ldm_semantic_synthesis256"),
    "bert/vocab.txt": lambda p, s: bert_vocab(p),
    "oi_classes.txt": lambda p, s: oi_classes(p),
    "oi_boxes.yaml": lambda p, s: oi_boxes(p),
    "landscape_seg.png": lambda p, s: coco_stuff_map(p),
    "models/cin256-v2": lambda p, s: compvis_cin(p),
    f"models/{INCEPTION_FILE}": lambda p, s: inception(p, s["inception"]),
    "evil.ckpt": lambda p, s: evil_checkpoint(p),
}


def ensure_inputs(line: str, root: Path, stand_ins: dict) -> list[str]:
    """Create the inputs ``line`` mentions that are missing under ``root``; return the keys created."""
    made = []
    for key, build in INPUTS.items():
        if key in line and not (root / key).exists():
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            build(root / key, stand_ins)
            made.append(key)
    return made
