"""radio.perplexity (python/radio/eval.py) against a hand computation, and the data loaders."""
from __future__ import annotations

import math

import pytest
import torch

import radio
from radio import data
from radio.eval import perplexity


class Bigram(torch.nn.Module):
    """Logits of the next token depend on the current token only: a model we can score by hand."""

    def __init__(self, vocab=11, max_len=None, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g) * 2)
        if max_len is not None:
            self.config = type("Config", (), {"max_position_embeddings": max_len})()

    def forward(self, ids):
        return self.table[ids]


def hand_ppl(table, ids, ctx, stride=None, max_windows=None):
    """exp(mean NLL) over the scored tokens, one token at a time in float64."""
    stride = stride or ctx
    t = table.double()
    nll, count, start, w = 0.0, 0, 0, 0
    while start + ctx <= len(ids) and (max_windows is None or w < max_windows):
        first = 1 if start == 0 else ctx - stride
        for p in range(max(first, 1), ctx):
            prev, cur = ids[start + p - 1], ids[start + p]
            row = t[prev]
            nll -= float(row[cur] - torch.logsumexp(row, 0))
            count += 1
        start += stride
        w += 1
    return math.exp(nll / count)


IDS = torch.randint(0, 11, (103,), generator=torch.Generator().manual_seed(1)).tolist()


@pytest.mark.parametrize("ctx,stride,batch", [(10, None, 1), (10, None, 4), (16, 5, 3),
                                              (103, None, 1)])
def test_matches_hand_computation(ctx, stride, batch):
    model = Bigram()
    got = perplexity(model, IDS, ctx=ctx, stride=stride, batch_size=batch, progress=False)
    want = hand_ppl(model.table.detach(), IDS, ctx, stride)
    assert got == pytest.approx(want, rel=1e-6)
    # a uniform model has perplexity = vocabulary size exactly
    flat = Bigram()
    with torch.no_grad():
        flat.table.zero_()
    assert perplexity(flat, IDS, ctx=ctx, progress=False) == pytest.approx(11.0, rel=1e-6)


def test_partial_window_dropped_and_max_windows():
    model = Bigram()
    # 103 ids, ctx 10: 10 full windows, the last 3 ids are never scored
    full = perplexity(model, IDS, ctx=10, progress=False)
    assert full == pytest.approx(perplexity(model, IDS[:100], ctx=10, progress=False), rel=1e-12)
    two = perplexity(model, IDS, ctx=10, max_windows=2, progress=False)
    assert two == pytest.approx(hand_ppl(model.table.detach(), IDS, 10, max_windows=2), rel=1e-6)
    assert two != pytest.approx(full, rel=1e-6)


def test_ctx_capped_at_model_maximum():
    model = Bigram(max_len=8)
    got = perplexity(model, IDS, ctx=2048, progress=False)
    assert got == pytest.approx(hand_ppl(model.table.detach(), IDS, 8), rel=1e-6)


class CharTokenizer:
    def __call__(self, text, return_tensors=None, verbose=True):
        return {"input_ids": torch.tensor([[min(ord(ch), 10) if ch == "\n" else ord(ch) % 10
                                            for ch in text]])}


def test_text_is_tokenized_once_with_crlf_normalised():
    model = Bigram()
    text = "ab\r\ncd ef\r\n" * 8
    lf = text.replace("\r\n", "\n")
    ids = CharTokenizer()(lf)["input_ids"][0]
    got = perplexity(model, text, ctx=12, tokenizer=CharTokenizer(), progress=False)
    assert got == pytest.approx(perplexity(model, ids, ctx=12, progress=False), rel=1e-12)


def test_bad_input():
    model = Bigram()
    with pytest.raises(ValueError, match="tokenizer"):
        perplexity(model, "some text", ctx=4, progress=False)
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(model, IDS[:5], ctx=10, progress=False)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, IDS, ctx=10, stride=11, progress=False)
    with pytest.raises(ValueError, match="ctx"):
        perplexity(model, IDS, ctx=1, progress=False)
    with pytest.raises(ValueError, match="integers"):
        perplexity(model, torch.rand(50), ctx=10, progress=False)


def test_public_name():
    assert radio.perplexity is perplexity


# -- data loaders -------------------------------------------------------------------------------

def _data_or_skip():
    try:
        return data.data_dir()
    except data.DataNotFoundError as e:
        pytest.skip(f"shared data not available: {e}")


def test_wikitext2_test_text():
    _data_or_skip()
    text = data.wikitext2_test()
    assert "\r" not in text and text.startswith(" = Robert Boulter = \n")
    assert 1_200_000 < len(text) < 1_300_000


def test_sotu_splits_are_disjoint_and_complete():
    _data_or_skip()
    calib = data.sotu_files("calibration")
    evaluation = data.sotu_files("evaluation")
    years = [int(p.name[:4]) for p in evaluation]
    assert len(evaluation) == 32 and min(years) == 1990 and max(years) == 2021
    assert max(int(p.name[:4]) for p in calib) < 1990
    assert not set(calib) & set(evaluation)
    assert "\r" not in data.sotu_text("evaluation")
    with pytest.raises(ValueError, match="split"):
        data.sotu_files("test")


def test_missing_data_dir_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIO_DATA", str(tmp_path))
    with pytest.raises(data.DataNotFoundError, match="RADIO_DATA"):
        data.wikitext2_test()
