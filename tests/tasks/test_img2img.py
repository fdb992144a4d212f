"""img2img / SDEdit (Meng et al. 2022) for every LDM: ``LatentDiffusion.sample(init=, strength=)`` and
``ldmkit sample init_image=PATH strength=S``: strength 0 is the input's reconstruction, strength 1 plain sampling
with the same seed, and any sampler runs in between."""

import json
from functools import partial

import numpy as np
import pytest
import torch
from conftest import ldmkit_inprocess
from PIL import Image

from ldmkit.data.shapes import ShapesDataset
from ldmkit.diffusion.k_samplers import sample_dpmpp_2m, sample_euler_ancestral
from ldmkit.diffusion.samplers import sample_ddim, sample_ddpm
from ldmkit.diffusion.schedule import NoiseSchedule
from ldmkit.errors import UserError
from ldmkit.images import to_uint8
from ldmkit.models.autoencoder import AutoencoderKL
from ldmkit.models.conditioners import ClassConditioner, NoConditioner
from ldmkit.models.first_stage import FirstStage
from ldmkit.models.ldm import LatentDiffusion
from ldmkit.models.unet import UNetModel
from ldmkit.tasks.inputs import Requests, init_image_requests, read_init_images

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ldm() -> LatentDiffusion:
    """A random class-conditional LDM on a random KL f=2 first stage (16 px images, 3 x 8 x 8 latents)."""
    torch.manual_seed(0)
    ae = AutoencoderKL(embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16)
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_head_channels=32, use_spatial_transformer=True, context_dim=16)
    return LatentDiffusion(unet, ClassConditioner(num_classes=4, embed_dim=16), NoiseSchedule(timesteps=100),
                           FirstStage(ae, scale_factor=0.5), latent_shape=(3, 8, 8)).eval()


def gens(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def images(n: int = 2, resolution: int = 16) -> torch.Tensor:
    ds = ShapesDataset(size=n, resolution=resolution, seed=2)
    return torch.stack([ds[i]["image"] for i in range(n)])


SAMPLERS = [partial(sample_ddim, steps=10, eta=1.0), partial(sample_ddpm, steps=10),
            partial(sample_euler_ancestral, steps=6), partial(sample_dpmpp_2m, steps=6)]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.func.__name__)
def test_strength_0_reconstructs_and_strength_1_is_plain_sampling(ldm, sampler):
    x = images()
    z0, labels = ldm.encode(x), torch.tensor([1, 3])
    reconstruction = ldm.first_stage.decode(ldm.first_stage.encode(x)).clamp(-1, 1)
    kept = ldm.sample(labels, sampler=sampler, guidance=3.0, generator=gens([4, 5]), init=z0, strength=0.0)
    assert (kept - reconstruction).abs().max() <= 1 / 255
    plain = ldm.sample(labels, sampler=sampler, guidance=3.0, generator=gens([4, 5]))
    full = ldm.sample(labels, sampler=sampler, guidance=3.0, generator=gens([4, 5]), init=z0, strength=1.0)
    assert (full - plain).abs().max() <= 1e-5
    half = ldm.sample(labels, sampler=sampler, guidance=3.0, generator=gens([4, 5]), init=z0, strength=0.5)
    assert (half - plain).abs().max() > 0.01 and (half - reconstruction).abs().max() > 0.01


def test_init_latents_must_fit_the_batch_and_strength_its_range(ldm):
    z0 = ldm.encode(images())
    with pytest.raises(ValueError, match=r"init latents of shape \(2, 3, 8, 8\), the batch needs \(1, 3, 8, 8\)"):
        ldm.sample(torch.tensor([0]), init=z0, strength=0.5)
    with pytest.raises(UserError, match=r"strength=2: must be a number in \[0, 1\]"):
        ldm.sample(torch.tensor([0, 1]), init=z0, strength=2)
    with pytest.raises(ValueError, match="strength=0.5 is img2img's: give the init latents too"):
        ldm.sample(torch.tensor([0, 1]), strength=0.5)


def test_init_images_are_fitted_and_paired_with_requests(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, 10:30] = 255  # a white centre 20 px wide on a 40 x 20 image: the centre crop to a square is white
    Image.fromarray(array).save(tmp_path / "wide.png")
    fitted = read_init_images([str(tmp_path / "wide.png")], (8, 8))
    assert fitted.shape == (1, 3, 8, 8) and fitted.mean() > 0.95  # squashing the whole image: mean 0
    with pytest.raises(UserError, match="init_image=.*nope.png: no such file"):
        read_init_images([str(tmp_path / "nope.png")], (8, 8))

    two = Requests(["a", "b"], [{"prompt": "a"}, {"prompt": "b"}])
    paired = init_image_requests(two, ["x.png", "y.png"], NoConditioner())
    assert [d["init_image"] for d in paired.described] == ["x.png", "y.png"] and paired.values == ["a", "b"]
    assert [d["init_image"] for d in init_image_requests(two, ["x.png"], NoConditioner()).described] == ["x.png"] * 2
    spread = init_image_requests(Requests(["a"], [{"prompt": "a"}]), ["x.png", "y.png"], NoConditioner())
    assert spread.values == ["a", "a"] and [d["init_image"] for d in spread.described] == ["x.png", "y.png"]
    unconditional = init_image_requests(None, ["x.png", "y.png"], NoConditioner())
    assert unconditional.values == [None, None] and len(unconditional) == 2
    with pytest.raises(UserError, match="init_image= names 3 images for 2 requests"):
        init_image_requests(two, ["x.png", "y.png", "z.png"], NoConditioner())


def test_sample_cli_img2img(tmp_path, tiny_ae):
    model = tmp_path / "ldm"
    code, output = ldmkit_inprocess(["train-ldm", f"ae={tiny_ae}", "cond=text", "trainer.max_steps=1",
                                     "loader.batch_size=4", "dataset.size=8", "unet.model_channels=32",
                                     "images.count=2", "images.steps=2", f"out={model}"])
    assert code == 0, output
    wide = ShapesDataset(size=1, resolution=48, seed=3)[0]["image"][:, :, 4:44]  # 48 x 40: resized + cropped
    Image.fromarray(to_uint8(wide).permute(1, 2, 0).numpy()).save(tmp_path / "in.png")
    common = [f"ckpt={model}", "prompt=a red circle", f"init_image={tmp_path}/in.png", "n=2", "sampler.steps=4"]

    from ldmkit import modeldir

    ldm = modeldir.load(model)
    z0 = ldm.encode(read_init_images([f"{tmp_path}/in.png"], (32, 32))).expand(2, -1, -1, -1)
    reconstruction = to_uint8(ldm.first_stage.decode(z0).clamp(-1, 1))
    runs = {"s0": ["strength=0"], "ddim": ["strength=0.5"], "dpmpp": ["strength=0.5", "sampler=dpmpp_2m"]}
    for name, args in runs.items():
        code, output = ldmkit_inprocess(["sample", *common, *args, f"out={tmp_path / name}"])
        assert code == 0, output
    pngs = {name: torch.from_numpy(np.stack([np.asarray(Image.open(tmp_path / name / f"00000{i}.png"))
                                             for i in range(2)])).permute(0, 3, 1, 2) for name in runs}
    assert (pngs["s0"].int() - reconstruction.int()).abs().max() <= 1  # strength 0: decode(encode(x))
    for name, sampler in (("ddim", partial(sample_ddim, steps=4)), ("dpmpp", partial(sample_dpmpp_2m, steps=4))):
        api = ldm.sample(["a red circle"] * 2, sampler=sampler, guidance=3.0, generator=gens([0, 1]), init=z0,
                         strength=0.5)
        assert (pngs[name].int() - to_uint8(api).int()).abs().max() <= 1, name
        assert (pngs[name].int() - reconstruction.int()).abs().max() > 5, name
    rows = [json.loads(line) for line in (tmp_path / "dpmpp" / "samples.jsonl").read_text().splitlines()]
    assert [(r["init_image"], r["strength"], r["sampler"], r["seed"]) for r in rows] == \
        [(f"{tmp_path}/in.png", 0.5, "dpmpp_2m", 0), (f"{tmp_path}/in.png", 0.5, "dpmpp_2m", 1)]
    with Image.open(tmp_path / "s0" / "000001.png") as im:
        assert im.text["init_image"] == f"{tmp_path}/in.png" and im.text["strength"] == "0.0"

    for args, message in ((["strength=1.5"], "strength=1.5: must be a number in [0, 1]"),
                          (["strength=0.5", "init_image=null"], "strength=0.5 is img2img's: give init_image=")):
        code, output = ldmkit_inprocess(["sample", *common, *args, f"out={tmp_path}/bad"])
        assert code == 2 and message in output and output.strip().count("\n") == 0, output
