"""Layout -> token ids for CompVis' layout2img LDM (taming-transformers' bounding-box conditional builder)."""

from __future__ import annotations

import math

import pytest
import torch

from ldmkit.errors import UserError
from ldmkit.models.layout_tokens import (
    DEPICTION,
    GROUP_OF,
    INSIDE,
    OCCLUDED,
    BoxObject,
    BoxTokenBuilder,
    flag_names,
    load_class_names,
    objects_from_layout,
)


def small(no_tokens: int = 16, encode_crop: bool = True) -> BoxTokenBuilder:
    """5 classes, 2 object slots, a 4 x 4 grid (no_tokens 16) unless told otherwise."""
    return BoxTokenBuilder(no_object_classes=5, no_max_objects=2, no_tokens=no_tokens,
                           encode_crop=encode_crop)


def half_even(v: float) -> int:
    """Round to the nearest integer, exact halves to the even one (written out, not via round())."""
    low = math.floor(v)
    frac = v - low
    return low + int(frac > 0.5 or (frac == 0.5 and low % 2 == 1))


def test_hand_worked_sequence():
    b = small()
    assert (b.no_sections, b.none, b.embedding_dim) == (4, 15, 8)
    obj = BoxObject(3, (0.0, 1 / 3, 2 / 3, 1.0))
    # (0, 1/3) -> row 1, col 0 = 4; (2/3, 1) -> row 3, col 2 = 14; one empty slot; the full crop (0, 0)-(1, 1)
    assert b.build([obj]).tolist() == [3, 4, 14, 15, 15, 15, 0, 15]
    assert b.build([BoxObject(3, obj.box, group_of=True)]).tolist()[0] == 3 + 5 * 1
    assert small(encode_crop=False).build([obj]).tolist() == [3, 4, 14, 15, 15, 15]
    assert b.build([obj]).dtype == torch.long


def test_modifier_bits_and_vocabulary_limit():
    box = (0.0, 0.0, 1.0, 1.0)
    occluded_inside = BoxObject(3, box, occluded=True, inside=True)
    assert occluded_inside.flags == OCCLUDED | INSIDE == 10
    assert small(no_tokens=64).build([occluded_inside]).tolist()[0] == 3 + 5 * (2 + 8) == 53
    with pytest.raises(ValueError, match=r"box 0: class 3 with flags occluded,inside gives token 53"):
        small().build([occluded_inside])  # 53 doesn't fit a 16-token vocabulary
    # 3 + 5 * 12 = 63 is the padding token of a 64-token vocabulary: it would read back as an empty slot
    with pytest.raises(ValueError, match="box 1: .*token 63"):
        small(no_tokens=64).build([BoxObject(0, box), BoxObject(3, box, depiction=True, inside=True)])
    no_extra = BoxTokenBuilder(5, 2, 16, True, use_group_parameter=True, use_additional_parameters=False)
    assert no_extra.build([occluded_inside]).tolist()[0] == 3  # flags the builder doesn't encode are dropped
    assert flag_names(GROUP_OF | DEPICTION) == ["group", "depiction"]


def test_bankers_rounding():
    b = small()  # ns - 1 = 3
    for x in (0.5, 1 / 6, 5 / 6, 0.3, 0.7, 0.0, 1.0):
        assert b.coordinate_token(x, 0.0) == half_even(x * 3)
        assert b.coordinate_token(0.0, x) == half_even(x * 3) * 4
    assert b.coordinate_token(0.5, 0.0) == 2  # 1.5 -> 2
    assert b.coordinate_token(1 / 6, 0.0) == 0  # 0.5 -> 0, where round-half-up would give 1
    assert math.floor(1 / 6 * 3 + 0.5) == 1
    assert b.coordinate_token(5 / 6, 0.0) == 2  # 2.5 -> 2


def test_layout2img_geometry():
    b = BoxTokenBuilder.for_sequence(max_seq_len=92, vocab_size=8192, no_object_classes=601)
    assert (b.embedding_dim, b.no_sections, b.none) == (92, 90, 8191)
    assert (b.no_max_objects, b.encode_crop) == (30, True)
    null = b.null().tolist()
    assert null == [8191] * 90 + [0, 8099] and null[-1] == 89 * 90 + 89
    assert b.build([BoxObject(7, (0.0, 0.0, 1.0, 1.0))]).tolist()[:3] == [7, 0, 8099]
    with pytest.raises(ValueError, match="box 0"):  # 600 + 601 * 15 is past the 8192-token vocabulary
        b.build([BoxObject(600, (0.0, 0.0, 1.0, 1.0), True, True, True, True)])
    # taming's open_images config: no_tokens 8192, max_objects_per_image 30, encode_crop -> 92 tokens
    assert BoxTokenBuilder(340, 30, 8192, encode_crop=True).embedding_dim == 92
    assert BoxTokenBuilder.for_sequence(90, 8192, 601).encode_crop is False
    assert BoxTokenBuilder.for_sequence(90, 8192, 601).no_max_objects == 30
    with pytest.raises(ValueError, match="max_seq_len=91"):
        BoxTokenBuilder.for_sequence(91, 8192, 601)


def test_inverse_recovers_layout():
    b = BoxTokenBuilder(no_object_classes=20, no_max_objects=5, no_tokens=1024, encode_crop=True)
    objs = [BoxObject(4, (0.1, 0.2, 0.55, 0.9), group_of=True),
            BoxObject(19, (0.0, 0.0, 1.0, 1.0), occluded=True, depiction=True),
            BoxObject(0, (0.33, 0.61, 0.47, 0.72), inside=True)]
    back = b.inverse(b.build(objs))
    assert len(back) == 3
    step = 1 / (b.no_sections - 1)
    for obj, (category, flags, box) in zip(objs, back, strict=True):
        assert (category, flags) == (obj.category_no, obj.flags)
        assert all(abs(u - v) <= step / 2 + 1e-9 for u, v in zip(box, obj.box, strict=True))
    assert b.inverse(b.null()) == []
    with pytest.raises(ValueError, match="length 7"):
        b.inverse(list(range(7)))


def test_order_clamping_and_too_many():
    b = small(no_tokens=100)
    a, c = BoxObject(1, (0.0, 0.0, 0.5, 0.5)), BoxObject(2, (0.5, 0.5, 1.0, 1.0))
    assert b.build([a, c]).tolist()[:6] == b.build([c, a]).tolist()[3:6] + b.build([c, a]).tolist()[:3]
    assert b.build([a, c]).tolist()[0] == 1  # the caller's order, not shuffled
    assert b.build([BoxObject(1, (-0.2, 0.5, 1.3, 1.0))]).equal(b.build([BoxObject(1, (0.0, 0.5, 1.0, 1.0))]))
    with pytest.raises(ValueError, match="3 boxes: .* at most 2"):
        b.build([a, c, a])
    assert b.null().equal(b.build([]))


def test_class_names_file(tmp_path):
    plain = tmp_path / "classes.txt"
    plain.write_text("cat\ndog\nTraffic light\n\n")
    assert load_class_names(plain) == ["cat", "dog", "Traffic light"]
    gap = tmp_path / "gap.txt"
    gap.write_text("cat\n\ndog\n")
    with pytest.raises(UserError, match="line 2 is blank"):
        load_class_names(gap)
    with pytest.raises(UserError, match="no such file"):
        load_class_names(tmp_path / "missing.csv")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match="empty"):
        load_class_names(tmp_path / "empty.txt")


def test_open_images_csv_numbering(tmp_path):
    rows = ["/m/0k4j,Car", "/m/01s55n,Suitcase", "/m/011k07,Tortoise", "/m/01g317,Person", "/m/0199g,Bicycle"]
    csv_file = tmp_path / "class-descriptions-boxable.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    # ids sorted as strings: /m/011k07 < /m/0199g < /m/01g317 < /m/01s55n < /m/0k4j, then Suitcase moved last
    expected = ["Tortoise", "Bicycle", "Person", "Car", "Suitcase"]
    assert sorted(r.split(",")[0] for r in rows)[:4] == ["/m/011k07", "/m/0199g", "/m/01g317", "/m/01s55n"]
    assert load_class_names(csv_file) == expected
    with_header = tmp_path / "oidv7.csv"
    with_header.write_text("LabelName,DisplayName\n" + "\n".join(rows) + "\n")
    assert load_class_names(with_header) == expected
    dup = tmp_path / "dup.csv"
    dup.write_text("/m/0k4j,Car\n/m/0k4j,Auto\n")
    with pytest.raises(UserError, match="appears twice"):
        load_class_names(dup)


def test_objects_from_layout():
    names = ["Tortoise", "Bicycle", "Person", "Car", "Suitcase"]
    layout = [{"box": [0.1, 0.2, 0.5, 0.9], "label": "person", "group": True},
              {"box": (0, 0, 1, 1), "label": 4, "occluded": True, "inside": True}]
    objs = objects_from_layout(layout, names, 5)
    assert objs == [BoxObject(2, (0.1, 0.2, 0.5, 0.9), group_of=True),
                    BoxObject(4, (0.0, 0.0, 1.0, 1.0), occluded=True, inside=True)]
    assert objects_from_layout([], None, 5) == []


@pytest.mark.parametrize("layout, names, pattern", [
    ([{"box": [0, 0, 1, 1], "label": 1}, {"box": [0, 0, 1, 1], "label": "Tortise"}], "names",
     r"^box 1: unknown class 'Tortise'; close matches: Tortoise$"),
    ([{"box": [0, 0, 1, 1], "label": "car"}], None,
     r"^box 0: .*pass cond\.classes=PATH or use class numbers$"),
    ([{"box": [0, 0, 1, 1], "label": 5}], None, r"^box 0: label 5 is outside the classes 0\.\.4$"),
    ([{"box": [0, 0, 1, 1], "label": -1}], None, "box 0: label -1"),
    ([{"box": [0, 0, 1, 1], "label": True}], None, "box 0: label=True"),
    ([{"box": [0, 0, 1, 1], "label": 0}, {"box": [0.5, 0, 0.5, 1], "label": 0}], None, r"box 1: .*x1 > x0"),
    ([{"box": [0, 0.6, 1, 0.2], "label": 0}], None, r"box 0: .*y1 > y0"),
    ([{"box": [1.2, 0, 1.5, 1], "label": 0}], None, "box 0: .*outside the image"),
    ([{"box": [0, 0, 1], "label": 0}], None, "box 0: box=.*four numbers"),
    ([{"box": [0, 0, 1, float("nan")], "label": 0}], None, "box 0: box=.*four numbers"),
    ([{"box": [0, 0, 1, 1], "label": 0, "group_of": True}], None, "box 0: unknown key 'group_of'"),
    ([{"box": [0, 0, 1, 1], "label": 0, "occluded": "yes"}], None,
     "box 0: occluded='yes' must be true or false"),
    ([{"label": 0}], None, "box 0: .*'box' and 'label'"),
])
def test_layout_errors(layout, names, pattern):
    class_names = ["Tortoise", "Bicycle", "Person", "Car", "Suitcase"] if names else None
    with pytest.raises(ValueError, match=pattern) as err:
        objects_from_layout(layout, class_names, 5)
    assert "\n" not in str(err.value)


def test_layout_class_list_checks():
    with pytest.raises(ValueError, match="names 2 classes but the model has 5"):
        objects_from_layout([], ["a", "b"], 5)
    with pytest.raises(ValueError, match=r"box 0: label 'Cat' names classes \[0, 2\]"):
        objects_from_layout([{"box": [0, 0, 1, 1], "label": "Cat"}], ["cat", "dog", "CAT"], 3)


def test_layout_conditioner_builds_tokens_from_reader_boxes():
    """Training batches of dataset=openimages/coco (boxes, box_labels, box_flags) become the same tokens as layouts."""
    from ldmkit.models.layout_tokens import BertLayoutConditioner

    cond = BertLayoutConditioner(64, 1, vocab_size=1000, max_seq_len=92, num_classes=20)
    batch = {"boxes": torch.tensor([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 0.0, 0.0]]]),
             "box_labels": torch.tensor([[3, -1]]), "box_flags": torch.tensor([[[True, False, False, False]] * 2])}
    tokens = cond.values(batch)
    layout = [{"box": [0.1, 0.2, 0.5, 0.6], "label": 3, "group": True}]
    assert torch.equal(tokens, cond.from_inputs({"layout": [layout]}))
    assert tokens[0, :3].tolist() == [3 + 20, 6 * 31 + 3, 18 * 31 + 15] and tokens[0, 3:90].eq(999).all()
    assert torch.equal(cond.values({k: v[0] for k, v in batch.items()}), tokens[0])  # one sample
    assert cond(tokens).context.shape == (1, 92, 64)
