"""Same answer at any scale with the weights sharded ACROSS ranks (issue 7, items 2-3):
``radio.quantize(..., offload="cpu")`` under torch.distributed with 2 and 4 CPU processes (gloo).

FSDP2 shards every streamed parameter's rows over all the ranks (one mesh over the default
group), so each rank's host holds about 1/world of every original. Each child process quantizes
the same tiny random Llama with the same seed and calibration tokens and writes its depths and
logits on fixed tokens; they must equal the single-process plain run's (depths exactly, logits
within float tolerance: the statistics are summed in another order), and every rank must hold
rank 0's model exactly. The settings make the ranks' shares unequal (3 micro-batches per round,
5 sequences for the output directions), so the lockstep passes run; the vocabulary (4097 rows,
just over 1 MiB) makes the embedding's own copy freed while FSDP holds it and the row shards
uneven. Inside the run each rank checks its shares of the originals.
"""
import importlib
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors.torch")

from radio import offload as streaming  # noqa: E402
from radio.config import QuantConfig  # noqa: E402
from radio.quantize import quantize  # noqa: E402
from tiny_distributed import (calib_tokens, depths_and_logits, gloo_group, one_thread,  # noqa: E402
                              rank_results, save_rank_result, spawn_ranks, tiny_llama)

quantize_module = importlib.import_module("radio.quantize")  # the module, not the function

VOCAB = 4097
RTOL, ATOL = 1e-4, 1e-5


def config(include_lm_head: bool) -> QuantConfig:
    # 5 sequences per round in micro-batches of 2: 3 micro-batches, dealt to the ranks (2 ranks:
    # 2 and 1 + a lockstep pass; 4 ranks: 1, 1, 1 and a lockstep pass).
    return QuantConfig.cpu(rounds=2, sequences_per_round=5, micro_batch=2, seq_len=16,
                           tokens_per_sequence=5, rows_per_group=16, pca_components=8,
                           pca_sequences=5, calib_sequences=6, progress=False,
                           include_lm_head=include_lm_head)


def run_quantize(include_lm_head: bool, offload) -> dict:
    """Quantize the tiny model; its depths per layer, logits on fixed tokens and embedding."""
    model = quantize(tiny_llama(VOCAB), bits=4.0, calib=calib_tokens(VOCAB),
                     config=config(include_lm_head), verbose=False, offload=offload)
    out = depths_and_logits(model, VOCAB)
    out["embedding"] = model.model.embed_tokens.weight.detach().clone()
    return out


def _check_shares(world: int, rank: int, seen: list):
    """Wrap _Session.backprop: every rank holds its block of rows of every original (FSDP's
    local shard), and the model's own embedding is freed while FSDP holds it."""
    backprop = quantize_module._Session.backprop

    def check(self, *args, **kwargs):
        assert self.sharded == (world > 1)
        for state in self.states:
            rows = state.out_features
            per = -(-rows // world)
            assert state.original.shape == (max(0, min(per, rows - rank * per)),
                                            state.in_features), state.name
            local = streaming.StreamedModel.local_weight(self.probes[state.name].weight)
            assert local.data_ptr() == state.original.data_ptr(), state.name
        seen.append(sum(s.original.numel() for s in self.states))
        return backprop(self, *args, **kwargs)

    quantize_module._Session.backprop = check


def _worker(rank: int, world: int, include_lm_head: bool, init_file: str, out_dir: str) -> None:
    with gloo_group(rank, world, init_file) as dist:
        seen = []
        _check_shares(world, rank, seen)
        own = {}
        stream_init = streaming.StreamedModel.__init__

        def spy(self, model, *args, **kwargs):
            own["embedding"] = model.model.embed_tokens.weight
            stream_init(self, model, *args, **kwargs)
            own["freed"] = own["embedding"].untyped_storage().nbytes() == 0

        streaming.StreamedModel.__init__ = spy
        result = run_quantize(include_lm_head, offload="cpu")
        assert seen, "backprop never ran"
        assert own["freed"], "the model's own embedding was not freed while streamed"
        assert dist.is_initialized() and dist.get_world_size() == world
        result["local_original_elements"] = torch.tensor(seen[0])
        save_rank_result(result, out_dir, rank)


@pytest.mark.parametrize("world, include_lm_head", [(2, True), (4, False)])
def test_sharded_offload_gives_the_single_process_answer(world, include_lm_head, tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    with one_thread():
        single = run_quantize(include_lm_head, offload=False)
        one_streamed = run_quantize(include_lm_head, offload="cpu")  # 1 process, 1-rank group
    spawn_ranks(_worker, world, (include_lm_head,), tmp_path)
    results = rank_results(tmp_path, world)
    depth_keys = sorted(k for k in single if k.startswith("depth/"))
    assert len(depth_keys) == 14 + include_lm_head  # 7 linear layers per block (+ the head)
    for result in (one_streamed, results[0]):
        assert sorted(k for k in result if k.startswith("depth/")) == depth_keys
        for key in depth_keys:  # the same bit allocation, unit by unit
            assert torch.equal(result[key], single[key]), key
        torch.testing.assert_close(result["logits"], single["logits"], rtol=RTOL, atol=ATOL)
        # the embedding (freed while streamed, gathered back from the row shards) unchanged
        assert torch.equal(result["embedding"], single["embedding"])
    for r in range(1, world):  # every rank ends with rank 0's model, exactly
        for key, value in results[0].items():
            if key != "local_original_elements":
                assert torch.equal(results[r][key], value), (r, key)
    # The ranks' shares of the originals add up to the whole, each about 1/world of it.
    whole = sum(m.weight.numel() for _, m in quantize_module.find_target_layers(
        tiny_llama(VOCAB), include_lm_head=include_lm_head))
    shares = [int(results[r]["local_original_elements"]) for r in range(world)]
    assert sum(shares) == whole, (shares, whole)
    assert max(shares) <= whole / world * 1.05, (shares, whole)


def _failing_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """A failure in the plan on every rank: each rank's model must come back whole (its
    linear layers gathered from the row shards, the embedding refilled)."""
    with gloo_group(rank, world, init_file):
        def fail(*args, **kwargs):
            raise RuntimeError("injected failure in plan")

        quantize_module._Session.plan = fail
        model = tiny_llama(VOCAB)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        own = dict(model.named_parameters())
        linears = {name: m for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear)}
        try:
            quantize(model, bits=4.0, calib=calib_tokens(VOCAB), config=config(False), verbose=False,
                     offload="cpu")
        except RuntimeError as error:
            assert "injected" in str(error)
        else:
            raise AssertionError("the injected failure did not surface")
        assert {name: m for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)} == linears
        for name, p in model.named_parameters():
            assert p is own[name], name
            assert torch.equal(p, before[name]), name
        with open(os.path.join(out_dir, f"ok{rank}"), "w") as f:
            f.write("restored")


def test_sharded_offload_failure_puts_every_rank_model_back(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    spawn_ranks(_failing_worker, 2, (), tmp_path)
    assert all((tmp_path / f"ok{r}").exists() for r in range(2))
