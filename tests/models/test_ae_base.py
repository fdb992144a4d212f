"""The frame AutoencoderKL and VQModel share (ldmkit.models.ae_base): CompVis' module order, one set of checks."""

import pytest
import torch

from ldmkit.models.ae_base import AutoencoderBase
from ldmkit.models.autoencoder import AutoencoderKL
from ldmkit.models.vq import VQModel

SMALL = dict(embed_dim=3, z_channels=4, ch=32, ch_mult=(1, 2), resolution=16)


@pytest.mark.parametrize(
    ("cls", "extra", "children", "moments"),
    [
        (AutoencoderKL, {}, ["encoder", "decoder", "quant_conv", "post_quant_conv"], 2),
        (VQModel, {"n_embed": 8}, ["encoder", "decoder", "quantize", "quant_conv", "post_quant_conv"], 1),
    ],
)
def test_first_stages_share_the_frame(cls, extra, children, moments):
    ae = cls(**SMALL, **extra)
    assert isinstance(ae, AutoencoderBase) and [name for name, _ in ae.named_children()] == children
    assert ae.quant_conv.out_channels == moments * 3 and ae.encoder.conv_out.out_channels == moments * 4
    assert ae.downsample_factor == 2 and ae.latent_channels == 3 and ae.last_layer() is ae.decoder.conv_out.weight
    with torch.no_grad():
        assert ae.decode(torch.zeros(1, 3, 4, 4)).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="num_res_blocks"):
        cls(**SMALL, **extra, num_res_blocks=0)
    with pytest.raises(TypeError):
        cls(**SMALL, **extra, double_z=moments == 1)  # fixed by the class
