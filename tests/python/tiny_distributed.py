"""Helpers shared by the multi-process tests (test_distributed.py, test_distributed_offload.py,
test_offload.py): the tiny random Llama they quantize, its calibration tokens, what a run is
compared on, the gloo process group of a spawned child, spawning the ranks and collecting what
each saved. A plain module (not a test file) so that the spawned children, which import the test
module by name, find it on the inherited sys.path."""
import contextlib
import datetime
import os
from typing import Callable, List

import torch
import transformers
from safetensors import torch as safetensors_torch

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
    """A spawned child's gloo process group (one torch thread), destroyed on the way out.

    On a normal exit the ranks meet at a barrier first: a rank that destroyed its group while
    the other was still finishing its last collective made that rank abort ("terminate called
    without an active exception", about 1 run in 10 of the failure test on the 2-core machine).
    The barrier times out (an error, not a hang) when a rank left by an exception."""
    torch.set_num_threads(1)
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        yield dist
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=120))
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def one_thread():
    """One torch thread inside (as in every spawned rank), the caller's count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def spawn_ranks(worker: Callable, world: int, args: tuple, out_dir) -> None:
    """Runs ``worker(rank, world, *args, init_file, out_dir)`` in ``world`` spawned processes
    (``init_file`` in ``out_dir``: the gloo rendezvous) and waits for all of them."""
    torch.multiprocessing.spawn(worker, args=(world, *args, os.path.join(str(out_dir), "init"),
                                              str(out_dir)),
                                nprocs=world, join=True, start_method="spawn")


def save_rank_result(result: dict, out_dir: str, rank: int) -> None:
    """A rank's tensors for the parent (``rank_results``)."""
    safetensors_torch.save_file(result, os.path.join(out_dir, f"rank{rank}.safetensors"))


def rank_results(out_dir, world: int) -> List[dict]:
    """What every rank saved with ``save_rank_result``, in rank order."""
    return [safetensors_torch.load_file(os.path.join(str(out_dir), f"rank{r}.safetensors"))
            for r in range(world)]
