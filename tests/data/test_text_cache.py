"""Cached text-encoder outputs: encode-dataset cond=clip stores the frozen tower's states in the latent shards and
train-ldm reads them instead of running the tower, with the same conditioning (fp16 storage tolerance)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli, run_inprocess
from torch.utils.data import default_collate

from ldmkit.data.latent_shards import iterate_shards
from ldmkit.data.shapes import ShapesDataset
from ldmkit.models.clip_conditioner import ClipConditioner

pytestmark = pytest.mark.usefixtures("one_thread")


def _clip(tiny_clip, **kw) -> ClipConditioner:
    _, config, weights = tiny_clip
    return ClipConditioner.from_files(model=str(config), weights=str(weights), **kw)


def test_cached_states_give_the_same_conditioning(tiny_clip):
    cond = _clip(tiny_clip, drop_prob=0.0)
    batch = default_collate([ShapesDataset(size=4, resolution=16)[i] for i in range(4)])
    batch.update(cond.cached_fields(cond.values(batch)))
    values = cond.values(batch)
    assert isinstance(values, dict) and values["states"].dtype == torch.float32
    cached, direct = cond(values), cond(batch["caption"])
    torch.testing.assert_close(cached.context, direct.context, atol=2e-3, rtol=2e-3)  # fp16 storage
    assert torch.equal(cached.mask, direct.mask)
    # another layer is another tower output: its fingerprint differs, so it reads the captions
    other = _clip(tiny_clip, layer="last")
    assert other.cache_field != cond.cache_field and other.values(batch) == batch["caption"]


def test_dropout_on_cached_states_uses_the_empty_caption(tiny_clip):
    cond = _clip(tiny_clip, drop_prob=0.5)
    captions = [f"a red circle number {i}" for i in range(64)]
    values = {"states": cond(captions).context, "mask": cond(captions).mask}
    dropped = cond.drop(values, torch.Generator().manual_seed(0))
    null = cond([""])
    is_null = [bool(torch.equal(dropped["states"][i], null.context[0])) for i in range(64)]
    kept = [bool(torch.equal(dropped["states"][i], values["states"][i])) for i in range(64)]
    assert all(a != b for a, b in zip(is_null, kept, strict=True))  # each row either kept or the null caption
    assert 16 <= sum(is_null) <= 48
    assert all(torch.equal(dropped["mask"][i], null.mask[0]) for i in range(64) if is_null[i])


def test_encode_dataset_caches_clip_states_and_train_ldm_uses_them(tiny_ae, tiny_clip, tmp_path):
    _, config, weights = tiny_clip
    clip = [f"cond.model={config}", f"cond.weights={weights}", "cond.width=64"]
    out = tmp_path / "latents"
    run_cli("encode-dataset", f"ae={tiny_ae}", "dataset.size=12", "shard_size=8", "batch_size=5", "cond=clip",
            *clip, f"out={out}")
    cond = _clip(tiny_clip)
    manifest = json.loads((out / "manifest.json").read_text())
    assert cond.cache_field in manifest["fields"] and f"{cond.cache_field}_mask" in manifest["fields"]
    assert manifest["plan"]["cond"]["layer"] == "penultimate"
    samples = list(iterate_shards(out))
    assert len(samples) == 12
    direct = cond([s["caption"] for s in samples])
    states = torch.stack([s[cond.cache_field] for s in samples])
    assert states.dtype == torch.float16 and states.shape == (12, 77, 64)
    torch.testing.assert_close(states.float(), direct.context, atol=2e-3, rtol=2e-3)
    assert torch.equal(torch.stack([s[f"{cond.cache_field}_mask"] for s in samples]), direct.mask)
    verified = run_cli("encode-dataset", f"verify={out}")
    text = verified.stdout + verified.stderr
    assert "12" in text and cond.cache_field in text

    trained = run_cli("train-ldm", f"ae={tiny_ae}", "dataset=latents", f"dataset.path={out}", "cond=clip", *clip,
                      "trainer.max_steps=2", "loader.batch_size=4", f"out={tmp_path}/ldm")
    assert "cached in the shards" in trained.stdout + trained.stderr
    # the other layer does not match the cache: it trains on the captions and says nothing about a cache
    other = run_cli("train-ldm", f"ae={tiny_ae}", "dataset=latents", f"dataset.path={out}", "cond=clip", *clip,
                    "cond.layer=last", "trainer.max_steps=1", "loader.batch_size=4", f"out={tmp_path}/ldm2")
    assert "cached" not in other.stdout + other.stderr


def test_encode_dataset_refuses_a_conditioner_with_nothing_to_cache(tiny_ae, tmp_path):
    proc = run_inprocess("encode-dataset", f"ae={tiny_ae}", "dataset.size=4", "cond=class", f"out={tmp_path}/x")
    assert proc.returncode == 2
    assert "nothing to cache" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x" / "manifest.json").exists()
