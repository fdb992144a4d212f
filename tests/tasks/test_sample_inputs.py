"""``ldmkit sample`` inputs for every conditioner (prompts file, labels, layouts, semantic maps, SR images,
inpainting image + mask), negative prompts, larger-than-training sizes and the outputs' metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf
from PIL import Image

from ldmkit.data.shapes import NUM_CLASSES, ShapesDataset, object_class
from ldmkit.errors import UserError
from ldmkit.models.concat_conditioners import InpaintConditioner, SemanticConditioner, SRConditioner
from ldmkit.models.conditioners import ClassConditioner, MultiConditioner, NoConditioner, TextConditioner
from ldmkit.models.layout_conditioner import LayoutConditioner
from ldmkit.tasks.inputs import negative_values, read_label_map, read_layouts, repeat_requests, user_requests


def options(**kw) -> OmegaConf:
    base = {"prompt": None, "prompts_file": None, "label": None, "layout": None, "semantic": None,
            "image": None, "mask": None}
    return OmegaConf.create({**base, **kw})


def save_png(array: np.ndarray, path, mode: str | None = None):
    Image.fromarray(array, mode=mode).save(path)
    return path


def text() -> TextConditioner:
    return TextConditioner(context_length=8, width=16, layers=1, heads=2)


# --- parsing, no model needed --------------------------------------------------------------------------------


def test_layout_files_json_and_yaml(tmp_path):
    cond = LayoutConditioner(max_objects=3)
    (tmp_path / "one.json").write_text(json.dumps([
        {"box": [0.1, 0.2, 0.5, 0.6], "label": "red circle"}, {"box": [0.5, 0.5, 1, 1], "label": 4}]))
    reqs = user_requests(cond, options(layout=str(tmp_path / "one.json")))
    values = reqs.values
    assert values.shape == (1, 3, 5) and len(reqs) == 1 and reqs.described[0]["layout"][0]["label"] == "red circle"
    torch.testing.assert_close(values[0, 0], torch.tensor([0.1, 0.2, 0.5, 0.6, object_class("circle", "red")]))
    assert values[0, 1, 4] == 4 and values[0, 2, 4] == -1 and not values[0, 2, :4].any()  # padding row
    (tmp_path / "two.yaml").write_text("- [{box: [0, 0, 0.5, 0.5], label: blue square}]\n"
                                       "- [{box: [0.5, 0.5, 1, 1], label: green triangle}]\n")
    assert len(read_layouts(tmp_path / "two.yaml")) == 2
    values = user_requests(cond, options(layout=str(tmp_path / "two.yaml"))).values
    assert values.shape == (2, 3, 5) and values[1, 0, 4] == object_class("triangle", "green")
    bad = {
        "many.json": [{"box": [0, 0, 0.1, 0.1], "label": 0}] * 4,
        "coords.json": [{"box": [0.5, 0, 0.1, 0.1], "label": 0}],
        "label.json": [{"box": [0, 0, 0.1, 0.1], "label": "pink circle"}],
        "shape.json": [{"box": [0, 0, 0.1], "label": 0}],
    }
    for name, content in bad.items():
        (tmp_path / name).write_text(json.dumps(content))
    (tmp_path / "broken.json").write_text("[{")
    expected = {"many.json": "at most 3", "coords.json": "x0 < x1", "label.json": "box 0 label='pink circle' is not a class; use 0..17 "
                "(did you mean 'green circle', 'red circle'", "shape.json": "box: [x0, y0, x1, y1]", "broken.json": "cannot parse",
                "none.json": "no such file"}
    for name, message in expected.items():
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")) as info:
            user_requests(cond, options(layout=str(tmp_path / name)))
        assert "\n" not in str(info.value) and (name == "none.json" or f"layout={tmp_path / name}" in str(info.value))


def test_label_maps_and_masks(tmp_path):
    ds = ShapesDataset(size=1, resolution=32)
    semantic = ds[0]["semantic"].numpy().astype(np.uint8)
    path = save_png(semantic, tmp_path / "map.png")
    torch.testing.assert_close(read_label_map(path), torch.from_numpy(semantic.astype(np.int64)))
    with pytest.raises(UserError, match="one channel"):
        read_label_map(save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "rgb.png"))
    high = save_png(np.full((8, 8), 40, np.uint8), tmp_path / "high.png")
    with pytest.raises(UserError, match=r"labels go up to 40 but this model knows 0..18 \(0 = background\)"):
        user_requests(SemanticConditioner(NUM_CLASSES), options(semantic=str(high)))
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="not a readable image"):
        read_label_map(tmp_path / "junk.png")


def test_requests_per_conditioner(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red circle\n\n  a blue square  \n")
    reqs = user_requests(text(), options(prompt="a green triangle", prompts_file=str(tmp_path / "prompts.txt")))
    assert reqs.values == ["a green triangle", "a red circle", "a blue square"] and reqs.size is None
    values, described = repeat_requests(reqs, 2)
    assert values[:3] == ["a green triangle"] * 2 + ["a red circle"] and described[1] == {"prompt": "a green triangle"}
    reqs = user_requests(ClassConditioner(NUM_CLASSES, 8), options(label=[3, "red circle"]))
    assert reqs.values.tolist() == [3, 0] and reqs.described[1] == {"label": 0, "class": "red circle"}
    low = save_png(np.zeros((8, 12, 3), np.uint8), tmp_path / "low.png")
    reqs = user_requests(SRConditioner(upscale=4), options(image=str(low)))
    assert reqs.values.shape == (1, 3, 8, 12) and reqs.size == (32, 48) and (reqs.values == -1).all()
    assert user_requests(text(), options()) is None
    assert user_requests(NoConditioner(), options()) is None
    errors = [
        (NoConditioner(), options(prompt="x"), "unconditional"),
        (text(), options(label=1), "takes prompt=/prompts_file=; drop label="),
        (text(), options(prompts_file=str(tmp_path / "none.txt")), "no such file"),
        (ClassConditioner(NUM_CLASSES, 8), options(label=18), "out of range 0..17"),
        (InpaintConditioner(3), options(image=str(low)), "needs image= and mask= together; missing mask="),
    ]
    (tmp_path / "empty.txt").write_text("\n\n")
    errors.append((text(), options(prompts_file=str(tmp_path / "empty.txt")), "no prompts in it"))
    for cond, opts, message in errors:
        with pytest.raises(UserError, match=message):
            user_requests(cond, opts)


def test_inpaint_inputs_must_match(tmp_path):
    image = save_png(np.full((16, 16, 3), 255, np.uint8), tmp_path / "img.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:12] = 255
    mask_path = save_png(mask, tmp_path / "mask.png")
    reqs = user_requests(InpaintConditioner(3), options(image=[str(image), str(image)], mask=str(mask_path)))
    assert reqs.values["image"].shape == (2, 3, 16, 16) and reqs.size == (16, 16)
    assert reqs.values["mask"].shape == (2, 1, 16, 16) and reqs.values["mask"].sum() == 2 * 32
    assert reqs.described[0] == {"image": str(image), "mask": str(mask_path)}
    small = save_png(np.zeros((8, 8), np.uint8), tmp_path / "small.png")
    with pytest.raises(UserError, match=r"mask=.*small.png: mask 0 is \(8, 8\) but its image is \(16, 16\)"):
        user_requests(InpaintConditioner(3), options(image=str(image), mask=str(small)))


def test_multi_conditioner_inputs_broadcast_and_negative_prompt(tmp_path):
    multi = MultiConditioner({"semantic": SemanticConditioner(NUM_CLASSES), "text": text()})
    semantic = save_png(np.zeros((24, 40), np.uint8), tmp_path / "map.png")
    reqs = user_requests(multi, options(semantic=str(semantic), prompt=["a red circle", "a blue square"]))
    assert reqs.values["semantic"].shape == (2, 24, 40) and reqs.values["text"] == ["a red circle", "a blue square"]
    assert reqs.size == (24, 40) and reqs.described[1] == {"semantic": str(semantic), "prompt": "a blue square"}
    with pytest.raises(UserError, match="also needs semantic="):
        user_requests(multi, options(prompt="a red circle"))
    uncond = negative_values(multi, "a green square", 2)
    assert uncond["text"] == ["a green square"] * 2 and (uncond["semantic"] == -1).all()
    assert negative_values(text(), "x", 3) == ["x"] * 3 and negative_values(text(), None, 3) is None
    with pytest.raises(UserError, match="needs a text-conditioned model"):
        negative_values(ClassConditioner(4, 8), "x", 1)


# --- through the CLI -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_ae):
    """One tiny LDM per image-input conditioner (2 training steps each) on the session's tiny first stage."""
    root = tmp_path_factory.mktemp("sample_inputs")
    for cond in ("layout", "sr", "inpaint", "semantic_text"):
        run_cli("train-ldm", f"ae={tiny_ae}", f"cond={cond}", "trainer.max_steps=2", "loader.batch_size=4",
                "dataset.size=16", "unet.model_channels=32", f"out={root}/{cond}")
    return root


def _jsonl(path):
    return [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]


def _size(path):
    with Image.open(path) as im:
        return im.size


def test_sample_layout_and_semantic_text(models, tmp_path):
    layout = tmp_path / "layout.yaml"
    layout.write_text("- {box: [0.1, 0.1, 0.6, 0.6], label: red circle}\n- {box: [0.5, 0.5, 0.9, 0.9], label: 5}\n")
    run_cli("sample", f"ckpt={models}/layout", f"layout={layout}", "n=2", "sampler.steps=4", f"out={tmp_path}/lay")
    rows = _jsonl(tmp_path / "lay")
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["layout"][0]["label"] == "red circle"
    assert _size(tmp_path / "lay" / "000001.png") == (32, 32)

    semantic = ShapesDataset(size=1, resolution=32)[0]["semantic"].numpy().astype(np.uint8)
    save_png(semantic, tmp_path / "map.png")
    # free text, verbatim: a file from a Windows editor (BOM, CRLF), commas, '=' and quotes on the command line
    (tmp_path / "prompts.txt").write_text("\ufeffa red circle, left of 'it'\r\na blue square\n", encoding="utf-8")
    run_cli("sample", f"ckpt={models}/semantic_text", f"semantic={tmp_path}/map.png",
            f"prompts_file={tmp_path}/prompts.txt", "negative_prompt=a green triangle, size=small", "n=1", "H=48",
            "W=64", "sampler=dpmpp_2m", "sampler.steps=4", f"out={tmp_path}/sem")
    rows = _jsonl(tmp_path / "sem")
    assert [r["prompt"] for r in rows] == ["a red circle, left of 'it'", "a blue square"]
    assert rows[0]["negative_prompt"] == "a green triangle, size=small" and rows[0]["sampler"] == "dpmpp_2m"
    assert _size(tmp_path / "sem" / "000000.png") == (64, 48)  # PIL: (width, height)


def test_sample_super_resolution_is_larger_than_training(models, tmp_path):
    low = ShapesDataset(size=1, resolution=64, sr_factor=4)[0]["lowres"]  # a 16 x 16 low-res input
    save_png(((low.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy(), tmp_path / "low.png")
    run_cli("sample", f"ckpt={models}/sr", f"image={tmp_path}/low.png", "n=2", "sampler.steps=4",
            "batch_size=1", f"out={tmp_path}/sr")
    assert _size(tmp_path / "sr" / "000000.png") == (64, 64)  # 16 px × the trained factor 4 (trained at 32 px)
    with Image.open(tmp_path / "sr" / "000001.png") as im:
        assert im.text["image"] == f"{tmp_path}/low.png" and im.text["seed"] == "1"


def test_sample_inpainting_and_its_errors(models, tmp_path):
    item = ShapesDataset(size=1, resolution=32)[0]
    save_png(((item["image"].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy(), tmp_path / "img.png")
    save_png((item["mask"][0].numpy() * 255).astype(np.uint8), tmp_path / "mask.png")
    run_cli("sample", f"ckpt={models}/inpaint", f"image={tmp_path}/img.png", f"mask={tmp_path}/mask.png", "n=1",
            "sampler.steps=4", f"out={tmp_path}/inp")
    assert _size(tmp_path / "inp" / "000000.png") == (32, 32)
    save_png(np.zeros((16, 16), np.uint8), tmp_path / "small.png")
    cases = [
        ([f"image={tmp_path}/img.png", f"mask={tmp_path}/small.png"], "is (16, 16) but its image is (32, 32)"),
        ([f"image={tmp_path}/img.png"], "needs image= and mask= together; missing mask="),
        ([f"image={tmp_path}/img.png", f"mask={tmp_path}/mask.png", "H=64"], "but the inpainting image is 32x32"),
        (["prompt=a red circle"], "takes image=/mask=; drop prompt="),
        (["H=36"], "must be a positive multiple of 8"),
        (["guidance=1000"], "guidance=1000"),
    ]
    for args, message in cases:
        proc = run_cli("sample", f"ckpt={models}/inpaint", *args, "sampler.steps=2", f"out={tmp_path}/bad",
                       check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
