"""radio.models.repeat_kv_sdpa_attention: the same attention as transformers' eager one on a
grouped-query model (forward, input gradients, with and without a padding mask)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from radio.models import REPEAT_KV_SDPA, register_repeat_kv_sdpa  # noqa: E402


def gqa_llama(attn_implementation: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=97, max_position_embeddings=64, hidden_size=48,
                                   intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2)
    return transformers.AutoModelForCausalLM.from_config(
        cfg, attn_implementation=attn_implementation).eval()


def test_register_returns_the_name_and_is_idempotent():
    assert register_repeat_kv_sdpa() == REPEAT_KV_SDPA
    assert register_repeat_kv_sdpa() == REPEAT_KV_SDPA


@pytest.mark.parametrize("padded", [False, True])
def test_repeat_kv_sdpa_matches_eager_attention(padded):
    name = register_repeat_kv_sdpa()
    eager, fast = gqa_llama("eager"), gqa_llama(name)
    fast.load_state_dict(eager.state_dict())
    assert fast.config._attn_implementation == name
    ids = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :5] = 0  # left padding: a real mask reaches the attention function
    outputs = []
    for model in (eager, fast):
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits
        # the loss on real tokens only: padded queries attend to nothing, differently per kernel
        weights = torch.linspace(-1, 1, logits.shape[-1]) * mask[..., None]
        (logits.float() * weights).sum().backward()
        outputs.append((logits.detach(), embeds.grad))
    (le, ge), (lf, gf) = outputs
    keep = mask.bool()
    assert le.abs().max() > 0.1  # a real model, not zeros
    torch.testing.assert_close(lf[keep], le[keep], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gf[keep], ge[keep], rtol=1e-4, atol=1e-4)
    # The eager model with its key/value projections swapped between groups would differ: the
    # comparison can fail.
    bad = gqa_llama(name)
    state = eager.state_dict()
    k = state["model.layers.0.self_attn.k_proj.weight"]
    state["model.layers.0.self_attn.k_proj.weight"] = torch.cat([k[8:], k[:8]])
    bad.load_state_dict(state)
    assert not torch.allclose(bad(ids, attention_mask=mask).logits[keep], le[keep], atol=1e-3)


def test_output_attentions_is_refused():
    model = gqa_llama(register_repeat_kv_sdpa())
    with pytest.raises(ValueError, match="output_attentions"):
        model(torch.zeros(1, 4, dtype=torch.long), output_attentions=True)
