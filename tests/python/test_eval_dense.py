"""Dense evaluation copies of radio models (radio.eval.dense_linear / materialize_dense): the
perplexity through materialized weights equals the RadioLinear path on a tiny quantized model."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import radio  # noqa: E402
from radio.eval import dense_linear, materialize_dense, perplexity  # noqa: E402
from radio.nn import RadioLinear  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VOCAB = 128


@pytest.fixture(scope="module")
def quantized():
    """A tiny random Llama quantized at a low rate: side information ~3.4 bpw at these shapes, so ~1.2 index bits per weight (0-bit and mixed-depth groups)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   vocab_size=VOCAB, max_position_embeddings=128)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # random weights of a realistic spread, not transformers' 0.02 init
        for p in model.parameters():
            p.normal_(0, 0.1)
    calib = torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(1))
    config = radio.QuantConfig.cpu(rounds=2, sequences_per_round=4, seq_len=32,
                                   tokens_per_sequence=5, rows_per_group=16, pca_components=16,
                                   pca_sequences=8, calib_sequences=8, progress=False)
    radio.quantize(model, bits=4.6, calib=calib, config=config, verbose=False)
    return model


def test_dense_linear_is_the_reference_dequantization(quantized):
    layers = [m for m in quantized.modules() if isinstance(m, RadioLinear)]
    assert layers
    depths = torch.cat([m.depth.flatten() for m in layers])
    assert depths.min() < depths.max()  # mixed depths: the test covers more than one code path
    for module in layers:
        dense = dense_linear(module)
        assert isinstance(dense, nn.Linear) and dense.weight.dtype == torch.float32
        assert torch.equal(dense.weight, module.dequantize())  # exactly, not approximately
        assert torch.equal(dense.bias, module.bias.float())
        x = torch.randn(5, module.in_features, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(dense(x), module(x), rtol=1e-5, atol=1e-5)


def test_perplexity_through_materialized_weights_matches(quantized):
    ids = torch.randint(0, VOCAB, (4 * 32,), generator=torch.Generator().manual_seed(3))
    dense = copy.deepcopy(quantized)
    assert materialize_dense(dense) == 14  # 2 blocks x 7 linears
    assert not any(isinstance(m, RadioLinear) for m in dense.modules())
    packed_ppl = perplexity(quantized, ids, ctx=32, batch_size=2, progress=False)
    dense_ppl = perplexity(dense, ids, ctx=32, batch_size=2, progress=False)
    # Same weights, same float32 GEMMs up to summation order: agree to ~1e-6 relative.
    assert dense_ppl == pytest.approx(packed_ppl, rel=1e-5)
    reference = perplexity(copy.deepcopy(quantized).float(), ids, ctx=32, progress=False)
    assert reference == pytest.approx(packed_ppl, rel=1e-5)


def test_dtype_follows_the_model(quantized):
    module = next(m for m in quantized.modules() if isinstance(m, RadioLinear))
    half = copy.deepcopy(module)
    half.dtype = torch.bfloat16
    dense = dense_linear(half)
    assert dense.weight.dtype == torch.bfloat16
    assert torch.equal(dense.weight, module.dequantize().to(torch.bfloat16))


def test_rejects_other_modules():
    with pytest.raises(ValueError, match="RadioLinear"):
        dense_linear(nn.Linear(4, 4))
