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


def _tiny_llama(seed=3):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_batched_sequences_give_the_same_model(act_order):
    """batch_size only changes how sequences go through a block, not the answer."""
    model = _tiny_llama()
    ids = torch.randint(0, 128, (6, 32), generator=torch.Generator().manual_seed(4))
    one, batched = copy.deepcopy(model), copy.deepcopy(model)
    quantize_gptq(one, ids, 3, 32, act_order=act_order, batch_size=1)
    quantize_gptq(batched, ids, 3, 32, act_order=act_order, batch_size=4)  # batches of 4 and 2
    changed = 0
    for (name, a), (_, b), (_, w) in zip(one.named_parameters(), batched.named_parameters(),
                                          model.named_parameters()):
        # A float32 summation-order difference may flip a rare rounding tie: compare closely.
        assert (a - b).abs().gt(1e-4).float().mean() < 0.01, name
        changed += int(not torch.equal(a, w))
    assert changed == 2 * 7  # every decoder linear was quantized, nothing else


def test_gptq_shares_hessians_of_layers_fed_the_same_input():
    from torch import nn
    from radio.baselines.gptq import _SharedInputHessians

    model = _tiny_llama()
    block = model.model.layers[0]
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    hessians = _SharedInputHessians(linears, torch.device("cpu"))
    ids = torch.randint(0, 128, (2, 16))
    for _ in range(2):
        model(ids)
        hessians.end_pass()
    hessians.remove()
    assert hessians.groups() == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                                 ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"],
                                 ["mlp.down_proj"]]
    # The shared Hessian is the one each layer would have accumulated alone.
    alone = _HessianAccumulator(64, torch.device("cpu"))
    inputs = []
    handle = linears["self_attn.k_proj"].register_forward_hook(lambda m, a, o: inputs.append(a[0]))
    for _ in range(2):
        model(ids)
    handle.remove()
    for x in inputs:
        alone.add(x)
    torch.testing.assert_close(hessians.acc["self_attn.q_proj"].h, alone.h)
    assert hessians.acc["self_attn.q_proj"].samples == 2 * 2 * 16


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_layers_sharing_the_column_loop_are_quantized_as_alone(act_order):
    from radio.baselines.gptq import gptq_quantize_weights

    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(n, 256, generator=gen) for n in (48, 20, 33)]
    hessians = []
    for seed in range(3):
        x = torch.randn(512, 256, generator=gen) @ (0.3 * torch.randn(256, 256, generator=gen))
        x[:, 7 * (seed + 1)] = 0  # a dead input per layer, at different columns
        acc = _HessianAccumulator(256, torch.device("cpu"))
        acc.add(x)
        hessians.append(acc.h)
    together = gptq_quantize_weights(weights, hessians, 3, 128, act_order=act_order)
    for w, h, q in zip(weights, hessians, together):
        alone = gptq_quantize_weight(w, h, 3, 128, act_order=act_order)
        assert q.shape == w.shape
        # bmm vs mm may sum in another order: allow a rare flipped rounding tie.
        assert (q - alone).abs().gt(1e-4).float().mean() < 0.005
        assert torch.isfinite(q).all()
