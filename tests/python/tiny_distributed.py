"""Helpers shared by the multi-process tests (test_distributed.py, test_distributed_offload.py):
the tiny random Llama they quantize, its calibration tokens, what a run is compared on, and the
gloo process group of a spawned child. A plain module (not a test file) so that the spawned
children, which import the test module by name, find it on the inherited sys.path."""
import contextlib

import torch
import transformers

from radio.nn import RadioLinear


def tiny_llama(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   vocab_size=vocab, max_position_embeddings=64)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def calib_tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (6, 16), generator=torch.Generator().manual_seed(1))


def depths_and_logits(model: torch.nn.Module, vocab: int) -> dict:
    """A quantized model's depths per layer and its logits on fixed tokens."""
    out = {f"depth/{name}": m.to_packed().depth.contiguous()
           for name, m in model.named_modules() if isinstance(m, RadioLinear)}
    tokens = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out["logits"] = model(input_ids=tokens).logits.float().contiguous()
    return out


@contextlib.contextmanager
def gloo_group(rank: int, world: int, init_file: str):
    """A spawned child's gloo process group (one torch thread), destroyed on the way out."""
    torch.set_num_threads(1)
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        yield dist
    finally:
        dist.destroy_process_group()
