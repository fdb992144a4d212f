"""Offline stand-ins for pretrained weights the tests and benchmarks cannot download (never used by ldmkit itself)."""

from __future__ import annotations

from pathlib import Path

import torch

from ldmkit.atomic import atomic_path


def write_random_inception(path: Path, seed: int = 0) -> Path:
    """Save torch-fidelity's Inception-v3 with random (kaiming) weights: an offline stand-in for tests and
    relative comparisons only (its FID ranks models on one table; it is not comparable to published FIDs)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
         mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            w = torch.empty_like(m.weight)
            torch.nn.init.kaiming_normal_(w, generator=gen)
            m.weight.data.copy_(w)
            if m.bias is not None:
                m.bias.data.zero_()
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(net.state_dict(), tmp)
    return path
