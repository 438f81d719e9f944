"""Baselines (RTN, GPTQ): size accounting by hand, and GPTQ's error below RTN's."""
import copy

import pytest
import torch

from radio.baselines import quantize_gptq, quantize_rtn, rtn_bits_per_weight
from radio.baselines.gptq import _HessianAccumulator, gptq_quantize_weight
from radio.baselines.rtn import rtn_quantize_weight


def test_bits_per_weight_counts_scales_and_zero_points():
    n, k = 64, 1024
    # 4-bit, groups of 128, asymmetric: f16 scale + 4-bit zero per 128 weights.
    assert rtn_bits_per_weight(4, n, k, 128, False) / (n * k) == pytest.approx(4 + 20 / 128)
    assert rtn_bits_per_weight(4, n, k, 128, True) / (n * k) == pytest.approx(4 + 16 / 128)
    # per channel: one group of k inputs per row
    assert rtn_bits_per_weight(3, n, k, 0, False) / (n * k) == pytest.approx(3 + 19 / k)
    # act-order stores an int32 group index per input column
    assert rtn_bits_per_weight(4, n, k, 128, False, True) - rtn_bits_per_weight(4, n, k, 128, False) == 32 * k


def test_rtn_error_falls_with_bits():
    torch.manual_seed(0)
    w = torch.randn(32, 256)
    errs = [(rtn_quantize_weight(w, b, 128) - w).pow(2).mean().item() for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 1e-4


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_its_objective(act_order):
    torch.manual_seed(1)
    w = torch.randn(48, 256)
    x = torch.randn(1024, 256) @ (0.3 * torch.randn(256, 256))  # correlated inputs
    acc = _HessianAccumulator(256, torch.device("cpu"))
    acc.add(x)
    q = gptq_quantize_weight(w, acc.h, 3, 128, act_order=act_order)
    r = rtn_quantize_weight(w, 3, 128)
    gptq_err = ((q - w) @ x.T).pow(2).mean()
    rtn_err = ((r - w) @ x.T).pow(2).mean()
    assert gptq_err < 0.8 * rtn_err


def test_model_level_gptq_and_rtn():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(2)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(0, 128, (4, 32))
    with torch.no_grad():
        ref = model(ids).logits
    m_rtn, m_gptq = copy.deepcopy(model), copy.deepcopy(model)
    rep_rtn = quantize_rtn(m_rtn, 3, 32)
    rep_gptq = quantize_gptq(m_gptq, ids, 3, 32)
    assert rep_rtn.bits_per_weight == pytest.approx(rep_gptq.bits_per_weight)
    # per block: q, o (64x64), k, v (32x64 with 2 KV heads), gate, up, down (128x64)
    assert rep_rtn.weights == 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64)
    with torch.no_grad():
        err_rtn = (m_rtn(ids).logits - ref).pow(2).mean()
        err_gptq = (m_gptq(ids).logits - ref).pow(2).mean()
    assert err_gptq < err_rtn


@pytest.mark.parametrize("bits,group", [(1, 128), (9, 128), (4, -1), (2.5, 128)])
def test_bad_arguments_are_refused(bits, group):
    with pytest.raises(ValueError, match="bits|group_size"):
        rtn_quantize_weight(torch.randn(4, 8), bits, group)
