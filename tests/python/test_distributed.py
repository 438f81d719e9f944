"""Same answer at any scale (issue 7, item 3): radio.quantize under torch.distributed with 2 and 4
CPU processes (gloo) gives the single-process bit allocation and outputs.

Each child process quantizes the same tiny random Llama with the same seed and calibration
tokens; every rank writes its depths and its logits on fixed tokens (safetensors). Compared to
the single-process run: identical depths, logits within rtol 1e-4 (the statistics are summed in
another order); and every rank holds rank 0's model exactly (its packed layers are broadcast).
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors.torch")

from radio.config import QuantConfig  # noqa: E402
from radio.quantize import quantize  # noqa: E402
from tiny_distributed import (calib_tokens, depths_and_logits, gloo_group, one_thread,  # noqa: E402
                              rank_results, save_rank_result, spawn_ranks, tiny_llama)

VOCAB = 128
RTOL, ATOL = 1e-4, 1e-5


def config(micro_batch: int) -> QuantConfig:
    # 4 sequences per round in micro-batches of ``micro_batch``, dealt to the ranks: 2 ranks
    # with 2 sequences in one backward pass each, or 4 ranks with one each.
    return QuantConfig.cpu(rounds=2, sequences_per_round=4, micro_batch=micro_batch, seq_len=16,
                           tokens_per_sequence=5, rows_per_group=16, pca_components=8,
                           pca_sequences=6, calib_sequences=6, progress=False)


def run_quantize(micro_batch: int) -> dict:
    """Quantize the tiny model; its depths per layer and logits on fixed tokens."""
    model = quantize(tiny_llama(VOCAB), bits=4.0, calib=calib_tokens(VOCAB),
                     config=config(micro_batch), verbose=False)
    return depths_and_logits(model, VOCAB)


def _worker(rank: int, world: int, micro_batch: int, init_file: str, out_dir: str) -> None:
    with gloo_group(rank, world, init_file):
        result = run_quantize(micro_batch)
        save_rank_result(result, out_dir, rank)


def single_process(micro_batch: int) -> dict:
    with one_thread():
        return run_quantize(micro_batch)


@pytest.mark.parametrize("world, micro_batch", [(2, 2), (4, 1)])
def test_same_answer_on_several_processes(world, micro_batch, tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    single = single_process(micro_batch)
    spawn_ranks(_worker, world, (micro_batch,), tmp_path)
    results = rank_results(tmp_path, world)
    depth_keys = sorted(k for k in single if k.startswith("depth/"))
    assert len(depth_keys) == 14  # 7 linear layers in each of the 2 blocks
    assert sorted(k for k in results[0] if k.startswith("depth/")) == depth_keys
    for key in depth_keys:  # the same bit allocation, unit by unit
        assert torch.equal(results[0][key], single[key]), key
    torch.testing.assert_close(results[0]["logits"], single["logits"], rtol=RTOL, atol=ATOL)
    for r in range(1, world):  # every rank ends with rank 0's model, exactly
        for key, value in results[0].items():
            assert torch.equal(results[r][key], value), (r, key)
