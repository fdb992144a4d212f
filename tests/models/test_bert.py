"""BertConditioner: CompVis BERTEmbedder's key layout and outputs (the shrunk zoo), the WordPiece tokenizer on
hand-worked examples, where the vocab comes from, and the id / null / dropout paths."""

from __future__ import annotations

import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from ldmkit.errors import UserError
from ldmkit.models.bert import BertConditioner, find_vocab

sys.path.insert(0, str(Path(__file__).parents[1] / "compat"))
import zoo  # noqa: E402  (tests/compat/zoo.py: the zoo's weight rule and CompVis references)

PREFIX = "cond_stage_model."
BERT_ZOO = {"ldm_txt2img-1p4B-eval": 77, "ldm_text2img256": 77, "ldm_layout2img-openimages256": 92}

# A tiny BERT vocab; a token's id is its line number (0-based), written next to it.
VOCAB = [
    "[PAD]",  # 0
    "[unused0]",  # 1
    "[UNK]",  # 2
    "[CLS]",  # 3
    "[SEP]",  # 4
    "[MASK]",  # 5
    "a",  # 6
    "red",  # 7
    "circle",  # 8
    "un",  # 9
    "##believ",  # 10
    "##able",  # 11
    ",",  # 12
    "!",  # 13
    "cafe",  # 14
    "blue",  # 15
    "\u4e2d",  # 16 (a CJK character: split off as its own word)
]
PAD, UNK, CLS, SEP = 0, 2, 3, 4


def _rows(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """A zoo fixture's BERTEmbedder rows: (key without ``cond_stage_model.``, shape), in checkpoint order."""
    return [(k[len(PREFIX):], s) for k, s, _ in zoo.rows(name) if k.startswith(PREFIX)]


def _write(path: Path, tokens: list[str]) -> Path:
    """A vocab.txt, one token a line."""
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def _tiny(tmp_path: Path, max_seq_len: int = 8, **kw) -> BertConditioner:
    """A small conditioner over the test vocab."""
    return BertConditioner(n_embed=16, n_layer=1, vocab_size=32, max_seq_len=max_seq_len,
                           vocab=str(_write(tmp_path / "vocab.txt", VOCAB)), **kw)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache in place of the user's."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read at import otherwise
    return cache


def test_state_dict_is_compvis_layout():
    cond = BertConditioner(n_embed=64, n_layer=2, vocab_size=1000, max_seq_len=77)
    got = [(k, tuple(v.shape)) for k, v in cond.state_dict().items()]
    assert got == _rows("ldm_txt2img-1p4B-eval")


@pytest.mark.parametrize("name", sorted(BERT_ZOO))
def test_matches_compvis_bert_embedder(name):
    cond = BertConditioner(n_embed=64, n_layer=2, vocab_size=1000, max_seq_len=BERT_ZOO[name]).eval()
    cond.load_state_dict({k: zoo.weight(PREFIX + k, s) for k, s in _rows(name)}, strict=True)
    ref = zoo.reference(name)
    with torch.no_grad():
        out = cond(ref["cond_input"])
    assert out.mask is None and out.concat is None and out.context.shape == ref["c"].shape
    tol = 1e-4 * max(1.0, ref["c"].abs().max().item())
    assert (out.context - ref["c"]).abs().max().item() <= tol


def test_wordpiece_by_hand(tmp_path):
    cond = _tiny(tmp_path)
    texts = ["A red circle!", "Unbelievable", "Café", "zebra", "red,blue\u4e2da", "", "  A\tRED\n"]
    tokens = cond.tokenize(texts)
    assert tokens.dtype == torch.long and tokens.shape == (7, 8)
    assert tokens.tolist() == [
        [CLS, 6, 7, 8, 13, SEP, PAD, PAD],  # lower-cased, "!" split off
        [CLS, 9, 10, 11, SEP, PAD, PAD, PAD],  # un ##believ ##able
        [CLS, 14, SEP, PAD, PAD, PAD, PAD, PAD],  # accent stripped: cafe
        [CLS, UNK, SEP, PAD, PAD, PAD, PAD, PAD],  # not in the vocab
        [CLS, 7, 12, 15, 16, 6, SEP, PAD],  # punctuation and the CJK character split off
        [CLS, SEP, PAD, PAD, PAD, PAD, PAD, PAD],  # the empty (null) caption
        [CLS, 6, 7, SEP, PAD, PAD, PAD, PAD],  # whitespace cleaned
    ]


def test_truncation_keeps_sep_last(tmp_path):
    cond = _tiny(tmp_path, max_seq_len=6)
    assert cond.tokenize(["a red circle, a blue circle!"]).tolist() == [[CLS, 6, 7, 8, 12, SEP]]
    assert cond.tokenize(["unbelievable red"]).tolist() == [[CLS, 9, 10, 11, 7, SEP]]  # exactly full


def test_padding_uses_the_vocabs_pad_id(tmp_path):
    vocab = [VOCAB[1], VOCAB[0], *VOCAB[2:]]  # [PAD] on line 1
    cond = BertConditioner(n_embed=16, n_layer=1, vocab_size=32, max_seq_len=5,
                           vocab=str(_write(tmp_path / "v.txt", vocab)))
    assert cond.tokenize(["red"]).tolist() == [[CLS, 7, SEP, 1, 1]]


def test_missing_vocab_names_both_ways(empty_hf_cache):
    cond = BertConditioner(n_embed=16, n_layer=1, vocab_size=32, max_seq_len=8)
    assert find_vocab() is None
    with pytest.raises(UserError) as exc:
        cond(["a red circle"])
    msg = str(exc.value)
    assert "\n" not in msg and "cond.vocab=" in msg and "Hugging Face cache" in msg
    # token ids need no vocab
    assert cond(torch.tensor([[CLS, 6, SEP]])).context.shape == (1, 3, 16)


def test_vocab_from_the_hugging_face_cache(empty_hf_cache, tmp_path):
    repo = empty_hf_cache / "models--bert-base-uncased"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")  # HF writes the hash without a newline
    vocab = _write(snapshot / "vocab.txt", VOCAB)
    assert find_vocab() == str(vocab) == find_vocab(empty_hf_cache)
    assert find_vocab(tmp_path / "elsewhere") is None
    cond = BertConditioner(n_embed=16, n_layer=1, vocab_size=32, max_seq_len=5)
    assert cond.tokenize(["red!"]).tolist() == [[CLS, 7, 13, SEP, PAD]]


def test_bad_vocab_paths(tmp_path):
    missing = tmp_path / "nope.txt"
    cond = BertConditioner(n_embed=16, n_layer=1, vocab_size=32, vocab=str(missing))
    with pytest.raises(UserError, match=r"^cond\.vocab=.*nope\.txt: no such file$"):
        cond(["a"])
    with pytest.raises(UserError, match=r"^cond\.vocab=.*nope\.txt: no such file$"):
        cond.set_vocab(str(missing))
    big = _write(tmp_path / "big.txt", VOCAB + [f"w{i}" for i in range(20)])  # 37 tokens > vocab_size 32
    with pytest.raises(UserError) as exc:
        cond.set_vocab(str(big))
    assert "\n" not in str(exc.value) and "37 tokens" in str(exc.value) and "vocab_size 32" in str(exc.value)
    cond.set_vocab(str(_write(tmp_path / "ok.txt", VOCAB)))
    assert cond.tokenize(["red"])[0, :3].tolist() == [CLS, 7, SEP]
    with pytest.raises(UserError):
        cond.set_vocab(str(big))
    assert cond.vocab.endswith("ok.txt") and cond.tokenize(["red"])[0, :3].tolist() == [CLS, 7, SEP]


def test_ids_strings_and_null_agree(tmp_path):
    torch.manual_seed(0)
    cond = _tiny(tmp_path).eval()
    with torch.no_grad():
        from_text = cond(["A red circle!", "Unbelievable"])
        ids = torch.tensor([[CLS, 6, 7, 8, 13, SEP, PAD, PAD], [CLS, 9, 10, 11, SEP, PAD, PAD, PAD]])
        from_ids = cond(ids)
        null = cond(cond.null(2)).context
        empty = cond(torch.tensor([[CLS, SEP] + [PAD] * 6] * 2)).context
    assert from_text.mask is None and from_text.context.shape == (2, 8, 16)
    assert torch.equal(from_text.context, from_ids.context)
    assert cond.null(2) == ["", ""] and torch.equal(null, empty)


def test_bad_ids(tmp_path):
    cond = _tiny(tmp_path)
    for ids in (torch.zeros(1, 9, dtype=torch.long), torch.tensor([[3, 32]]), torch.tensor([[3, -1]]),
                torch.zeros(1, 4), torch.zeros(4, dtype=torch.long)):
        with pytest.raises(ValueError) as exc:
            cond(ids)
        assert "\n" not in str(exc.value) and "0..31" in str(exc.value)
    with pytest.raises(ValueError, match="captions"):
        cond([1, 2])


def test_inputs_and_dropout(tmp_path):
    cond = _tiny(tmp_path, drop_prob=1.0)
    assert cond.inputs == ("prompt",) and cond.task == "text"
    assert cond.from_inputs({"prompt": ["a red circle", 7]}) == ["a red circle", "7"]
    assert cond.drop(["a", "red"]) == ["", ""]
    with pytest.raises(ValueError, match="drop_prob=0"):
        cond.drop(torch.tensor([[CLS, SEP]]))
    cond.drop_prob = 0.0
    ids = torch.tensor([[CLS, SEP]])
    assert cond.drop(ids) is ids and cond.drop(["a"]) == ["a"]
