"""``ldmkit encode-dataset``: first-stage posteriors of a dataset -> webdataset latent shards + manifest."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress
from torch.utils.data import DataLoader

from ldmkit import modeldir
from ldmkit.data.access import EachOnce, first_item, length, write_skips
from ldmkit.data.latent_shards import encode_fields
from ldmkit.tasks.common import console, device, run_dir


def _rows(batch: dict, i: int) -> dict:
    """The i-th sample of a collated batch."""
    return {k: v[i] for k, v in batch.items()}


def run(cfg: DictConfig) -> None:
    """Encode every sample once (posterior mean and std as fp16) with every conditioning field."""
    import webdataset as wds

    out = run_dir()
    ae_dir = modeldir.resolve(cfg.ae, "first_stage", "ae")
    ae_meta = modeldir.read_json(ae_dir / "meta.json")
    dev = device()
    fs = modeldir.load(ae_dir).to(dev)
    dataset = instantiate(cfg.dataset)
    field_names = sorted(set(first_item(dataset)) - {"image"} | {"latent_mean", "latent_std"})
    loader = DataLoader(EachOnce(dataset), batch_size=cfg.batch_size)
    count = 0
    with wds.ShardWriter(str(out / "%06d.tar"), maxcount=cfg.shard_size, verbose=0) as sink, Progress(console=console) as bar:
        task = bar.add_task("encoding", total=length(dataset))
        for batch in loader:
            with torch.no_grad():
                post = fs.posterior(batch["image"].to(dev))
            mean, std = post.mean.half().cpu(), post.std.half().cpu()
            for i in range(mean.shape[0]):
                fields = encode_fields({"latent_mean": mean[i], "latent_std": std[i], **_rows(batch, i)})
                sink.write({"__key__": f"{count:08d}", **fields})
                count += 1
            bar.advance(task, mean.shape[0])
    skipped = write_skips(dataset, out)
    shards = sorted(p.name for p in out.glob("*.tar"))
    modeldir.write_json(out / "manifest.json", {
        "format": modeldir.FORMAT,
        "count": count,
        "shards": shards,
        "fields": field_names,
        **({"skipped_samples": skipped["skipped"]} if skipped else {}),
        "first_stage": {"path": str(ae_dir.resolve()), "hash": ae_meta["hash"]},
        "f": ae_meta["f"],
        "latent_shape": ae_meta["latent_shape"],
        "scale_factor": ae_meta["scale_factor"],
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
    })
    console.print(f"{count} samples in {len(shards)} shard(s) -> {out}")
