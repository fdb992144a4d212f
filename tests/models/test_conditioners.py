"""Conditioners: shapes, masks, null values, dropout."""

import torch

from ldmkit.models.conditioners import ClassConditioner, NoConditioner, TextConditioner


def test_text_conditioner_tokens_and_mask():
    cond = TextConditioner(context_length=16, width=32, layers=1, heads=2)
    ctx, mask = cond(["a small red circle left of a blue square", ""])
    assert ctx.shape == (2, 16, 32) and mask.shape == (2, 16)
    # SOT + 9 words + EOT for the caption, SOT + EOT for the empty (null) caption
    assert mask.sum(1).tolist() == [11, 2]
    ctx2, _ = cond(["a small blue circle left of a blue square", ""])
    assert not torch.allclose(ctx[0], ctx2[0]) and torch.allclose(ctx[1], ctx2[1])


def test_class_conditioner_null_and_range():
    cond = ClassConditioner(num_classes=18, embed_dim=8)
    ctx, mask = cond(torch.tensor([0, 17, 18]))
    assert ctx.shape == (3, 1, 8) and mask is None
    assert cond.null(2).tolist() == [18, 18]
    try:
        cond(torch.tensor([19]))
    except ValueError as exc:
        assert "0..17" in str(exc)
    else:
        raise AssertionError("out-of-range class accepted")


def test_dropout_rate():
    cond = ClassConditioner(num_classes=5, embed_dim=4, drop_prob=0.25)
    dropped = cond.drop(torch.zeros(20000, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    assert abs((dropped == 5).float().mean().item() - 0.25) < 0.02
    text = TextConditioner(context_length=8, width=32, layers=1, heads=2, drop_prob=1.0)
    assert text.drop(["a", "b"]) == ["", ""]
    assert NoConditioner()(None) == (None, None)
