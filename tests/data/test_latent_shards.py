"""Latent shard writer/reader round trip: every field survives, latents are fp16, nothing is unpickled."""

import io
import pickle

import numpy as np
import torch
import webdataset as wds

from ldmkit.data.latent_shards import decode_fields, encode_fields, iterate_shards, latent_shards
from ldmkit.data.shapes import ShapesDataset
from ldmkit.modeldir import write_json


def _write(tmp_path, samples):
    with wds.ShardWriter(str(tmp_path / "%06d.tar"), maxcount=3, verbose=0) as sink:
        for i, s in enumerate(samples):
            sink.write({"__key__": f"{i:08d}", **encode_fields(s)})
    shards = sorted(p.name for p in tmp_path.glob("*.tar"))
    write_json(tmp_path / "manifest.json", {"count": len(samples), "shards": shards})
    return shards


def test_round_trip_every_field(tmp_path):
    ds = ShapesDataset(size=7, resolution=16)
    samples = []
    for i in range(7):
        s = dict(ds[i])
        s["latent_mean"] = torch.randn(3, 4, 4).half()
        s["latent_std"] = torch.rand(3, 4, 4).half()
        samples.append(s)
    shards = _write(tmp_path, samples)
    assert len(shards) == 3  # maxcount=3 -> 3 + 3 + 1
    back = list(iterate_shards(tmp_path))
    assert [b["__key__"] for b in back] == [f"{i:08d}" for i in range(7)]
    for src, got in zip(samples, back, strict=True):
        assert "image" not in got
        assert got["caption"] == src["caption"] and got["scene"] == src["scene"]
        assert int(got["class_label"]) == int(src["class_label"])
        assert torch.equal(got["boxes"], src["boxes"]) and torch.equal(got["box_labels"], src["box_labels"])
        assert torch.equal(got["semantic"], src["semantic"])
        assert got["latent_mean"].dtype == torch.float32
        assert torch.equal(got["latent_mean"], src["latent_mean"].float())
        assert torch.equal(got["latent_std"], src["latent_std"].float())


def test_streaming_dataset_batches(tmp_path):
    samples = [{"latent_mean": torch.full((2, 2, 2), float(i)).half(), "latent_std": torch.zeros(2, 2, 2).half(),
                "caption": f"c{i}", "class_label": torch.tensor(i)} for i in range(10)]
    _write(tmp_path, samples)
    loader = torch.utils.data.DataLoader(latent_shards(str(tmp_path), shuffle=4), batch_size=5)
    batches = list(loader)
    assert len(batches) == 2  # with_epoch(count)
    batch = batches[0]
    assert batch["latent_mean"].shape == (5, 2, 2, 2)
    for m, c, k in zip(batch["latent_mean"], batch["caption"], batch["class_label"], strict=True):
        assert c == f"c{int(k)}" and torch.all(m == k)


def test_decoder_never_unpickles():
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    buf = io.BytesIO()
    np.save(buf, np.array([Boom()], dtype=object), allow_pickle=True)
    raw = {"__key__": "x", "evil.pyd": pickle.dumps(Boom()), "caption.txt": b"ok"}
    assert decode_fields(raw) == {"caption": "ok"}
    try:
        decode_fields({"bad.npy": buf.getvalue()})
    except ValueError as exc:
        assert "pickle" in str(exc).lower()
    else:
        raise AssertionError("an object array was loaded")
