"""PatchGAN discriminator (Isola et al. 2017) in the taming-transformers ``NLayerDiscriminator`` layout."""

from __future__ import annotations

from torch import Tensor, nn


class NLayerDiscriminator(nn.Module):
    """Conv stack whose output is one real/fake logit per overlapping patch (keys ``main.N.*`` as taming/CompVis)."""

    def __init__(self, *, input_nc: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        kw, padw = 4, 1
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kw, stride=stride, padding=padw, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kw, stride=1, padding=padw))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits (B, 1, h, w) for images in [-1, 1]."""
        return self.main(x)


def _init_weights(m: nn.Module) -> None:
    """DCGAN init: conv N(0, 0.02), batch-norm scale N(1, 0.02) and zero bias."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
