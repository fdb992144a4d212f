"""Conditioners: shapes, masks, null values, dropout."""

import torch

from ldmkit.diffusion.cond import Cond, cat_batch, merge
from ldmkit.models.conditioners import ClassConditioner, MultiConditioner, NoConditioner, TextConditioner


def test_text_conditioner_tokens_and_mask():
    cond = TextConditioner(context_length=16, width=32, layers=1, heads=2)
    out = cond(["a small red circle left of a blue square", ""])
    ctx, mask = out.context, out.mask
    assert ctx.shape == (2, 16, 32) and mask.shape == (2, 16)
    # SOT + 9 words + EOT for the caption, SOT + EOT for the empty (null) caption
    assert mask.sum(1).tolist() == [11, 2]
    ctx2 = cond(["a small blue circle left of a blue square", ""]).context
    assert not torch.allclose(ctx[0], ctx2[0]) and torch.allclose(ctx[1], ctx2[1])


def test_pooled_text_conditioner_hands_the_end_of_text_state_as_its_vector():
    cond = TextConditioner(context_length=16, width=32, layers=1, heads=2, pooled=True)
    out = cond(["a red circle", "a small blue square left of a green triangle"])
    assert cond.vector_dim == 32 and out.vector.shape == (2, 32)
    ends = out.mask.sum(1) - 1  # SOT + words + EOT: the EOT is the last unmasked token
    torch.testing.assert_close(out.vector, out.context[torch.arange(2), ends])
    assert TextConditioner(context_length=16, width=32, layers=1, heads=2)(["a red circle"]).vector is None


def test_class_conditioner_null_and_range():
    cond = ClassConditioner(num_classes=18, embed_dim=8)
    out = cond(torch.tensor([0, 17, 18]))
    ctx, mask = out.context, out.mask
    assert ctx.shape == (3, 1, 8) and mask is None
    assert cond.null(2).tolist() == [18, 18]
    try:
        cond(torch.tensor([19]))
    except ValueError as exc:
        assert "0..17, or 18 for the null class" in str(exc)
    else:
        raise AssertionError("out-of-range class accepted")


def test_dropout_rate():
    cond = ClassConditioner(num_classes=5, embed_dim=4, drop_prob=0.25)
    dropped = cond.drop(torch.zeros(20000, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    assert abs((dropped == 5).float().mean().item() - 0.25) < 0.02
    text = TextConditioner(context_length=8, width=32, layers=1, heads=2, drop_prob=1.0)
    assert text.drop(["a", "b"]) == ["", ""]
    assert NoConditioner()(None) == Cond()


def test_multi_conditioner_merges_tokens_and_keeps_each_dropout_rate():
    text = TextConditioner(context_length=8, width=16, layers=1, heads=2, drop_prob=1.0)
    label = ClassConditioner(num_classes=5, embed_dim=16, drop_prob=0.0)
    multi = MultiConditioner({"text": text, "label": label})
    batch = {"caption": ["a red circle", "a blue square"], "class_label": torch.tensor([1, 2])}
    values = multi.drop(multi.values(batch))
    assert values["text"] == ["", ""] and values["label"].tolist() == [1, 2]
    out = multi(values)
    assert out.context.shape == (2, 9, 16) and out.mask.shape == (2, 9)
    assert out.mask[:, -1].all() and out.mask[0].sum() == 3  # SOT + EOT of "" plus the class token
    torch.testing.assert_close(out.context[:, -1], label.embedding.weight[[1, 2]])
    assert multi.key == "caption,class_label" and multi.null(2)["label"].tolist() == [5, 5]


def test_cat_batch_and_merge_fill_missing_masks():
    a = Cond(torch.zeros(2, 3, 4), torch.tensor([[True, False, True]] * 2))
    b = Cond(torch.ones(2, 1, 4), None, torch.ones(2, 5, 4, 4))
    both = cat_batch([a, Cond(torch.ones(2, 3, 4))])
    assert both.context.shape == (4, 3, 4) and both.mask[2:].all() and both.concat is None
    merged = merge([a, b])
    assert merged.context.shape == (2, 4, 4) and merged.mask.tolist()[0] == [True, False, True, True]
    assert merged.concat.shape == (2, 5, 4, 4) and merged.vector is None
    v = Cond(vector=torch.ones(2, 3))
    assert merge([v, Cond(vector=torch.zeros(2, 2))]).vector.tolist()[0] == [1, 1, 1, 0, 0]
    assert cat_batch([v, Cond(vector=torch.zeros(2, 3))]).vector[:, 0].tolist() == [1, 1, 0, 0]
