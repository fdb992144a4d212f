"""Speed switches (``speed.*`` in every command that runs a UNet): CPU threads, channels-last memory format,
``torch.compile`` and reduced-precision autocast. Each switch leaves the results unchanged (within the dtype's
tolerance, tested in tests/test_speed.py); defaults were chosen by ``benchmarks/bench_unet_throughput.py``.

In training ``speed.autocast`` sets Lightning's precision (``trainer.precision=bf16-mixed``); in sampling
(sample, eval-fid) only the UNet runs in that dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ldmkit.errors import UserError

if TYPE_CHECKING:
    from ldmkit.models.ldm import LatentDiffusion

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
LIGHTNING_PRECISION = {None: "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


@dataclass(frozen=True)
class Speed:
    """The speed switches of one command (``speed:`` in conf/speed.yaml)."""

    threads: int | None = None
    channels_last: bool = False
    compile: bool = False
    autocast: str | None = None

    @classmethod
    def from_config(cls, node: object) -> Speed:
        """Build from a config node (or None: all defaults); bad values are one-line user errors."""
        values = dict(node or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"speed: unknown keys {unknown}; speed takes {sorted(cls.__dataclass_fields__)}")
        speed = cls(**values)
        if speed.threads is not None and (not isinstance(speed.threads, int) or speed.threads < 1):
            raise UserError(f"speed.threads={speed.threads} must be a positive integer or null (torch's default)")
        if speed.autocast not in (None, *AUTOCAST):
            raise UserError(f"speed.autocast={speed.autocast} is not one of: null, {', '.join(AUTOCAST)}")
        return speed


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads (None: leave torch's default, one per core)."""
    if threads is not None:
        torch.set_num_threads(int(threads))


def prepare(module: nn.Module, speed: Speed) -> nn.Module:
    """Apply the module-level switches in place (memory format, compilation); the state-dict names stay."""
    if speed.channels_last:
        module.to(memory_format=torch.channels_last)
    if speed.compile:
        module.compile(dynamic=False)
    return module


def for_sampling(ldm: LatentDiffusion, speed: Speed) -> LatentDiffusion:
    """Apply the switches to an LDM that samples: threads, the UNet's memory format and compilation, and the
    UNet's autocast dtype (the sampler's arithmetic and the decoder stay in float32)."""
    set_threads(speed.threads)
    prepare(ldm.unet, speed)
    ldm.sample_dtype = AUTOCAST.get(speed.autocast)
    return ldm


def training_precision(trainer_precision: str | int, speed: Speed) -> str | int:
    """Lightning's ``trainer.precision`` given ``speed.autocast`` (which may set it, but not contradict it)."""
    wanted = LIGHTNING_PRECISION[speed.autocast]
    if speed.autocast is None or str(trainer_precision) == wanted:
        return trainer_precision
    if str(trainer_precision) not in ("32", "32-true"):
        raise UserError(f"speed.autocast={speed.autocast} contradicts trainer.precision={trainer_precision}: "
                        f"set one of them (speed.autocast={speed.autocast} trains with {wanted})")
    return wanted
