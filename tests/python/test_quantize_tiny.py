"""radio.quantize end to end on tiny random transformers models (CPU, seconds): targets, the
estimators, calibration inputs, determinism and bad input."""
import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from radio import calibration, layer, sensitivity  # noqa: E402
from radio.config import QuantConfig  # noqa: E402
from radio.nn import RadioLinear  # noqa: E402
from radio.quantize import (  # noqa: E402
    _output_function, _Session, find_target_layers, quantize)

VOCAB = 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, max_position_embeddings=128)
    if family == "llama":
        cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, **common)
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, **common)
    elif family == "opt":
        cfg = transformers.OPTConfig(hidden_size=64, ffn_dim=192, num_hidden_layers=2,
                                     num_attention_heads=4, word_embed_proj_dim=64,
                                     **common)
    elif family == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(hidden_size=64, intermediate_size=192,
                                         num_hidden_layers=2, num_attention_heads=4, **common)
    else:
        raise KeyError(family)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def small_config(**overrides) -> QuantConfig:
    # gs=16 keeps one unit increment (16 rows x 32 columns) below 0.01 bits per weight here.
    values = dict(rounds=3, sequences_per_round=4, seq_len=32, tokens_per_sequence=5,
                  rows_per_group=16, pca_components=16, pca_sequences=8, calib_sequences=8,
                  generate_sequences=4, generate_length=32, progress=False)
    values.update(overrides)
    return QuantConfig.cpu(**values)


def calib_tokens(n=8, t=32, seed=1):
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def radio_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, RadioLinear)}


def stored_bits_per_weight(model):
    layers = radio_layers(model).values()
    nbytes = sum(m.nbytes() for m in layers)
    return 8.0 * nbytes / sum(m.out_features * m.in_features for m in layers), nbytes


@pytest.mark.parametrize("family", ["llama", "qwen2", "opt", "gpt_neox"])
def test_bits_target_met(family):
    model = tiny(family)
    reference = copy.deepcopy(model)
    linear_names = [n for n, _ in find_target_layers(model)]
    assert len(linear_names) >= 8
    quantize(model, bits=5.0, calib=calib_tokens(), config=small_config(), verbose=False)
    report = model.radio_report
    bpw, nbytes = stored_bits_per_weight(model)
    assert 5.0 - 0.01 <= bpw <= 5.0
    assert report.bits_per_weight == pytest.approx(bpw)
    assert report.total_bytes == nbytes
    assert sorted(radio_layers(model)) == sorted(linear_names)
    # Embeddings and the LM head stay full precision.
    assert isinstance(model.get_output_embeddings(), nn.Linear)
    assert isinstance(model.get_input_embeddings(), nn.Embedding)
    x = calib_tokens(2, 32, seed=9)
    with torch.no_grad():
        want, got = reference(x).logits, model(x).logits
    rel = float((got - want).norm() / want.norm())
    assert 0.0 < rel < 0.5, rel


def test_more_bits_less_error_and_size_target():
    reference = tiny("llama")
    x = calib_tokens(2, 32, seed=9)
    with torch.no_grad():
        want = reference(x).logits
    errors = []
    for bits in (4.5, 6.5):
        model = quantize(copy.deepcopy(reference), bits=bits, calib=calib_tokens(),
                         config=small_config(), verbose=False)
        with torch.no_grad():
            errors.append(float((model(x).logits - want).norm() / want.norm()))
    assert errors[1] < 0.5 * errors[0]
    total_weights = sum(m.weight.numel() for _, m in find_target_layers(reference))
    size = int(5.5 * total_weights / 8)
    model = quantize(copy.deepcopy(reference), size=size, calib=calib_tokens(),
                     config=small_config(), verbose=False)
    _, nbytes = stored_bits_per_weight(model)
    assert size - 0.01 * total_weights / 8 <= nbytes <= size


def test_max_distortion_target():
    reference = tiny("opt")
    sizes = []
    for target in (0.05, 0.005):
        model = quantize(copy.deepcopy(reference), max_distortion=target, calib=calib_tokens(),
                         config=small_config(), verbose=False)
        assert 0.0 < model.radio_report.predicted_distortion <= target
        sizes.append(model.radio_report.total_bytes)
    assert sizes[1] > sizes[0]


def test_same_seed_same_result():
    outs = []
    for _ in range(2):
        model = quantize(tiny("llama"), bits=5.0, calib=None, config=small_config(),
                         verbose=False)
        outs.append({n: m.to_packed() for n, m in radio_layers(model).items()})
    for name, a in outs[0].items():
        b = outs[1][name]
        for key, tensor in a.tensors().items():
            assert torch.equal(tensor, b.tensors()[key]), (name, key)


def test_random_sign_estimator_is_unbiased():
    """Average of many random-sign passes -> the per-token sum, group by group."""
    model = tiny("llama", seed=3)
    targets = find_target_layers(model)
    cfg = small_config(rows_per_group=16)
    session = _Session(model, targets, cfg, torch.device("cpu"), progress=False)
    session.install(offload=False, has_bias=True)
    try:
        output_fn = _output_function(model)
        tokens = calib_tokens(1, 24, seed=4)
        positions = sensitivity.token_positions(24, 5)
        direction = torch.nn.functional.normalize(torch.randn(1, 64), dim=1)
        gen = torch.Generator().manual_seed(0)

        def measure(estimator, repeats, signs=None):
            for s in session.states:
                s.g2_sum.zero_()
            for _ in range(repeats):
                session.config = cfg.replace(estimator=estimator)
                if signs is not None:  # control: fixed +1 signs (cross terms never cancel)
                    saved = sensitivity.rademacher
                    sensitivity.rademacher = lambda shape, g: torch.ones(shape)
                try:
                    session.backprop(tokens, direction, positions, output_fn, gen)
                finally:
                    if signs is not None:
                        sensitivity.rademacher = saved
            return torch.cat([s.g2_sum.flatten() / repeats for s in session.states])

        exact = measure("per_token", 1)
        averaged = measure("random_sign", 300)
        fixed = measure("random_sign", 1, signs="ones")
    finally:
        session.restore()

    def rel_err(est):
        return float((est - exact).abs().sum() / exact.abs().sum())

    assert float(exact.sum()) > 0
    assert abs(float(averaged.sum() / exact.sum()) - 1.0) < 0.05
    assert rel_err(averaged) < 0.15
    assert rel_err(fixed) > 2 * rel_err(averaged)  # the test can tell a biased estimator


def test_per_token_estimator_and_lm_head():
    model = tiny("llama")
    cfg = small_config(estimator="per_token", rounds=2, include_lm_head=True)
    quantize(model, bits=6.0, calib=calib_tokens(), config=cfg, verbose=False)
    assert isinstance(model.lm_head, RadioLinear)
    assert model.radio_report.estimator == "per_token"
    # The head got sensitivity in logit space: some of its units got bits.
    hist = next(lr for lr in model.radio_report.layers if lr.name == "lm_head").depth_histogram
    assert sum(hist[1:]) > 0


class _CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % VOCAB for c in text]}


def test_calibration_inputs():
    text = ["The quick brown fox jumps over the lazy dog. " * 4, "Second text, shorter."]
    model = quantize(tiny("qwen2"), bits=5.0, calib=text, tokenizer=_CharTokenizer(),
                     config=small_config(), verbose=False)
    assert "text" in model.radio_report.calibration
    batches = [{"input_ids": calib_tokens(2, 40, seed=s)} for s in range(3)]
    cs = calibration.prepare(batches, None, tokenizer=None, seq_len=32, calib_sequences=8,
                             generate_sequences=4, generate_length=32, seed=0, device="cpu",
                             vocab_size=VOCAB)
    assert tuple(cs.tokens.shape) == (6, 32) and cs.source == "batches"
    generated = calibration.generate(tiny("llama"), 3, 20, seed=5, device="cpu",
                                     vocab_size=VOCAB, progress=False)
    again = calibration.generate(tiny("llama"), 3, 20, seed=5, device="cpu", vocab_size=VOCAB,
                                 progress=False)
    assert tuple(generated.tokens.shape) == (3, 20)
    assert torch.equal(generated.tokens, again.tokens)


def test_filter_fn_on_a_plain_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(VOCAB, 64), nn.Linear(64, 128), nn.GELU(),
                          nn.Linear(128, 64))
    quantize(model, bits=6.0, calib=calib_tokens(), config=small_config(rows_per_group=32),
             filter_fn=lambda m, name: isinstance(m, nn.Linear), verbose=False)
    assert isinstance(model[1], RadioLinear) and isinstance(model[3], RadioLinear)
    assert model(calib_tokens(1, 8)).shape == (1, 8, 64)


# -- bad input ------------------------------------------------------------------------------

def test_model_without_linear_layers():
    model = nn.Sequential(nn.Embedding(VOCAB, 8), nn.LayerNorm(8))
    with pytest.raises(ValueError, match="found no nn.Linear layers"):
        quantize(model, bits=4, calib=calib_tokens(), config=small_config())


@pytest.mark.parametrize("bits", [1.0, 8.5])
def test_bits_out_of_range(bits):
    # Side information alone is about 3.5 bits per weight at 16 rows per group.
    with pytest.raises(ValueError, match=rf"bits={bits} is outside.*expected bits in \("):
        quantize(tiny("llama"), bits=bits, calib=calib_tokens(), config=small_config())


@pytest.mark.parametrize("text,match", [
    ([], "calibration text is empty"),
    (["", "  "], "calibration text is empty"),
    (["too short"], "calibration text has 9 tokens; expected at least seq_len=32"),
])
def test_bad_calibration_text(text, match):
    with pytest.raises(ValueError, match=match):
        quantize(tiny("llama"), bits=5, calib=text, tokenizer=_CharTokenizer(),
                 config=small_config())


def test_bad_token_ids():
    with pytest.raises(ValueError, match=r"token ids in \[0, 500\]; expected ids in \[0, 128\)"):
        quantize(tiny("llama"), bits=5, calib=torch.tensor([[0, 500, 3, 4]]),
                 config=small_config())


def test_nan_weights():
    model = tiny("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"layer 'model.layers.1.mlp.up_proj' has 1 non-finite"):
        quantize(model, bits=5, calib=calib_tokens(), config=small_config())


def test_failure_midway_restores_the_model(monkeypatch):
    model = tiny("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def boom(*args, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(layer, "allocate", boom)
    with pytest.raises(RuntimeError, match="solver exploded"):
        quantize(model, bits=5, calib=calib_tokens(), config=small_config())
    assert not radio_layers(model)
    assert all(isinstance(m, nn.Linear) for _, m in find_target_layers(model))
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert all(p.requires_grad for p in model.parameters())


def test_config_validation():
    with pytest.raises(ValueError, match="estimator"):
        QuantConfig(estimator="magic")
    with pytest.raises(ValueError, match="rows_per_group must be >= 1, got 0"):
        QuantConfig(rows_per_group=0)
    with pytest.raises(ValueError, match="symmetric"):
        QuantConfig(symmetric=True)
    assert QuantConfig.for_device("cpu").preset == "cpu"
    assert QuantConfig.for_device("cuda").rounds == 64


def test_memory_plan_for_gpu_shapes():
    """The GPU memory plan on real shapes (meta tensors: no memory, no GPU needed)."""
    from radio.quantize import _plan_memory

    def llama(hidden, inter, kv, layers):
        shapes = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden),
                  (inter, hidden), (inter, hidden), (hidden, inter)]
        blocks = nn.ModuleList(nn.ModuleList(nn.Linear(k, n, bias=False, device="meta")
                                             for n, k in shapes) for _ in range(layers))
        return [(str(i), m) for i, m in enumerate(blocks.modules())
                if isinstance(m, nn.Linear)], blocks

    cuda = torch.device("cuda")
    cfg = QuantConfig.paper()
    targets, blocks = llama(4096, 11008, 4096, 32)  # Llama-2-7B: measured 17.3 GiB peak
    ckpt, micro = _plan_memory(cfg, targets, blocks, 2048, cuda, torch.bfloat16, 4.69)
    assert (ckpt, micro) == (22, 1)
    targets, blocks = llama(576, 1536, 192, 30)  # SmolLM2-135M: 16 = 8 + 8 sequences
    assert _plan_memory(cfg, targets, blocks, 2048, cuda, torch.bfloat16, 16.0) == (0, 8)
    # per_token's passes hold at most a micro-batch's tokens (sensitivity.per_token_passes).
    assert _plan_memory(cfg.replace(estimator="per_token"), targets, blocks, 2048, cuda,
                        torch.bfloat16, 16.0) == (0, 8)
    assert _plan_memory(cfg, targets, blocks, 2048, torch.device("cpu"), torch.float32,
                        16.0) == (0, 1)


def test_decoder_blocks_found_past_expert_lists():
    from radio.quantize import find_decoder_blocks

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.Linear(8, 8)
            self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(6))  # more than blocks

    model = nn.Module()
    model.layers = nn.ModuleList(Block() for _ in range(3))
    name, blocks = find_decoder_blocks(model)
    assert name == "layers" and blocks is model.layers
    assert len(find_target_layers(model)) == 3 * 7
