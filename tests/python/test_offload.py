"""radio.quantize(..., offload=...) (issue 7, item 1): the weights stay in host memory and FSDP2
streams them block by block (radio.offload).

On the CPU the same FSDP2 machinery runs with the CPU as the "device" (``offload="cpu"``, a
1-rank gloo group): same depths and logits within float tolerance as ``offload=False``, the
FSDP wrapping and the process group gone afterwards, the model put back as it was when a run
fails. The GPU test (skipped without CUDA) checks the real thing on a model whose blocks are
much smaller than the whole: peak GPU memory well below the model's size.
"""
import importlib

import pytest
import torch

transformers = pytest.importorskip("transformers")

from radio import offload as streaming  # noqa: E402
from radio.config import QuantConfig  # noqa: E402
from radio.nn import RadioLinear  # noqa: E402
from radio.quantize import quantize  # noqa: E402

quantize_module = importlib.import_module("radio.quantize")  # the module, not the function

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 128
RTOL, ATOL = 1e-4, 1e-5


def tiny_llama(layers: int = 2, hidden: int = 64, inter: int = 128) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=VOCAB,
                                   max_position_embeddings=64)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def config(**overrides) -> QuantConfig:
    values = dict(rounds=2, sequences_per_round=4, micro_batch=2, seq_len=16,
                  tokens_per_sequence=5, rows_per_group=16, pca_components=8, pca_sequences=6,
                  calib_sequences=6, progress=False)
    values.update(overrides)
    return QuantConfig.cpu(**values)


def calib_tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (6, 16), generator=torch.Generator().manual_seed(1))


def eval_tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))


def depths(model) -> dict:
    return {name: m.to_packed().depth for name, m in model.named_modules()
            if isinstance(m, RadioLinear)}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=eval_tokens().to(next(model.parameters()).device)).logits.float()


def assert_unwrapped(model) -> None:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
    assert not any(isinstance(m, FSDPModule) for m in model.modules())
    assert not any(isinstance(p, DTensor) for p in model.parameters())
    assert not torch.distributed.is_initialized(), "the 1-rank group must be torn down"


@pytest.mark.parametrize("checkpointing", [False, True])
def test_offload_on_cpu_matches_the_plain_run(checkpointing):
    """Also with every block checkpointed (recomputed in the backward pass inside FSDP's
    unit), as the GPU path plans it."""
    cfg = config(checkpointing=checkpointing)
    plain = quantize(tiny_llama(), bits=4.0, calib=calib_tokens(), config=cfg, verbose=False)
    streamed = quantize(tiny_llama(), bits=4.0, calib=calib_tokens(), config=cfg,
                        verbose=False, offload="cpu")
    assert streamed.radio_report.settings["checkpointed_blocks"] == (2 if checkpointing else 0)
    assert_unwrapped(streamed)
    assert all(p.device.type == "cpu" for p in streamed.parameters())
    assert streamed.radio_report.settings["offload"] == "cpu"
    a, b = depths(plain), depths(streamed)
    assert a.keys() == b.keys() and len(a) == 14
    for name in a:
        assert torch.equal(a[name], b[name]), name
    torch.testing.assert_close(logits(streamed), logits(plain), rtol=RTOL, atol=ATOL)
    # A second streamed run in the same process (the first left no process group behind).
    again = quantize(tiny_llama(), bits=4.0, calib=calib_tokens(), config=cfg, verbose=False,
                     offload="cpu")
    torch.testing.assert_close(logits(again), logits(streamed), rtol=0, atol=0)


def test_streamed_weights_are_written_in_place_and_unwrapping_restores_the_model():
    """What requantize relies on: writing a parameter's local shard changes what the streamed
    forward computes; closing puts the model's own parameters back unchanged."""
    model = tiny_llama()
    tokens = eval_tokens()
    before = logits(model)
    own = {name: p for name, p in model.named_parameters()}
    own_values = {name: p.detach().clone() for name, p in own.items()}
    block = model.model.layers[0]
    stream = streaming.StreamedModel(model, model.model, model.model.layers, [],
                                     torch.device("cpu"))
    try:
        assert isinstance(block.mlp.down_proj.weight, torch.distributed.tensor.DTensor)
        with torch.no_grad():
            hidden = model.model(input_ids=tokens).last_hidden_state
            streaming.StreamedModel.local_weight(block.mlp.down_proj.weight).zero_()
            changed = model.model(input_ids=tokens).last_hidden_state
        assert not torch.allclose(hidden, changed)
    finally:
        stream.close()
    assert_unwrapped(model)
    for name, p in model.named_parameters():
        assert p is own[name], f"{name}: not the model's own parameter object"
        assert torch.equal(p, own_values[name]), name
    torch.testing.assert_close(logits(model), before, rtol=0, atol=0)
    # The unwrapped modules can be wrapped again (no FSDP state left on them).
    streaming.StreamedModel(model, model.model, model.model.layers, [],
                            torch.device("cpu")).close()
    assert_unwrapped(model)
    torch.testing.assert_close(logits(model), before, rtol=0, atol=0)


def test_failed_offload_run_puts_the_model_back(monkeypatch):
    model = tiny_llama()
    before = logits(model)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure in plan")

    monkeypatch.setattr(quantize_module._Session, "plan", fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        quantize(model, bits=4.0, calib=calib_tokens(), config=config(), verbose=False,
                 offload="cpu")
    assert_unwrapped(model)
    assert {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)} == linears
    torch.testing.assert_close(logits(model), before, rtol=0, atol=0)


def test_streamed_run_keeps_one_host_copy_of_each_weight(monkeypatch):
    """During the rounds, the original weight, the replaced nn.Linear's weight and the storage
    FSDP streams from are one tensor: the model's own copy was let go (host memory ~1x)."""
    backprop = quantize_module._Session.backprop
    checked = []

    def check(self, *args, **kwargs):
        for state in self.states:
            streamed = streaming.StreamedModel.local_weight(self.probes[state.name].weight)
            ptrs = {state.original.data_ptr(), state.weight.data_ptr(),
                    state.module.weight.data_ptr(), streamed.data_ptr()}
            assert len(ptrs) == 1, state.name
        checked.append(len(self.states))
        return backprop(self, *args, **kwargs)

    monkeypatch.setattr(quantize_module._Session, "backprop", check)
    quantize(tiny_llama(), bits=4.0, calib=calib_tokens(), config=config(), verbose=False,
             offload="cpu")
    assert checked and checked[0] == 14


def test_offload_bad_inputs():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch.cuda.is_available"):
            quantize(tiny_llama(), bits=4.0, calib=calib_tokens(), config=config(),
                     verbose=False, offload=True)
    with pytest.raises(ValueError, match="offload must be True, False or a device"):
        quantize(tiny_llama(), bits=4.0, calib=calib_tokens(), config=config(), verbose=False,
                 offload="no-such-device")
    with pytest.raises(ValueError, match="checkpoint_dir"):
        quantize(tiny_llama(), bits=4.0, calib=calib_tokens(), config=config(), verbose=False,
                 offload="cpu", checkpoint_dir="/nonexistent/radio-ckpt")
    with pytest.raises(ValueError, match="needs calibration data"):
        quantize(tiny_llama(), bits=4.0, config=config(), verbose=False, offload="cpu")
    plain = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 32), torch.nn.Linear(32, 32))
    with pytest.raises(ValueError, match="decoder blocks"):
        quantize(plain, bits=6.0, calib=calib_tokens(), config=config(), verbose=False,
                 offload="cpu", filter_fn=lambda m, name: True)
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_offload_on_gpu_keeps_a_few_blocks_on_the_gpu(monkeypatch):
    """32 blocks in host memory, streamed: during the forward and backward passes the GPU holds
    far less than the model (a few blocks, the statistics, small activations), and the result
    matches the plain run on the GPU (same depths, close logits). The per-round quantization
    is left out of the bound: it works on all layers of one shape at once (``layer_batches``),
    which for a model this small is a large part of it."""
    def model():
        return tiny_llama(layers=32, hidden=256, inter=768)

    backprop = quantize_module._Session.backprop
    peaks = []

    def measured(self, *args, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        backprop(self, *args, **kwargs)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())

    # The same micro-batches in both runs (the random-sign statistics depend on them), every
    # block checkpointed (as the streamed plan does on a GPU). 64 rows per group: the
    # statistics (~1.25 bytes per group column) stay a small part of the bound.
    cfg = config(checkpointing=True, rows_per_group=64)
    model_bytes = sum(p.numel() * p.element_size() for p in model().parameters())
    monkeypatch.setattr(quantize_module._Session, "backprop", measured)
    streamed = quantize(model(), bits=4.0, calib=calib_tokens(), config=cfg, verbose=False,
                        offload=True)
    monkeypatch.undo()
    assert_unwrapped(streamed)
    assert peaks and max(peaks) < 0.5 * model_bytes, (max(peaks), model_bytes)
    plain = quantize(model().cuda(), bits=4.0, calib=calib_tokens(), config=cfg, verbose=False)
    a, b = depths(plain), depths(streamed)
    assert a.keys() == b.keys()
    same = sum(torch.equal(a[n].cpu(), b[n].cpu()) for n in a)
    assert same == len(a), f"{len(a) - same} of {len(a)} layers got other depths"
    torch.testing.assert_close(logits(streamed.cuda()), logits(plain), rtol=1e-3, atol=1e-4)


def _offload_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One torchrun-like rank: the user's gloo group exists; offload makes each rank its own
    1-rank group for FSDP and leaves the user's group initialised."""
    from safetensors.torch import save_file
    torch.set_num_threads(1)
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        model = quantize(tiny_llama(), bits=4.0, calib=calib_tokens(), config=config(),
                         verbose=False, offload="cpu")
        assert dist.is_initialized() and dist.get_world_size() == world
        out = {f"depth/{k}": v.contiguous() for k, v in depths(model).items()}
        out["logits"] = logits(model).contiguous()
        save_file(out, f"{out_dir}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_offload_under_an_existing_process_group_matches_one_process(tmp_path):
    """Two gloo ranks, each streaming its own copy: rank 0's depths and logits equal the
    single-process plain run's (depths exactly, logits within float tolerance)."""
    from safetensors.torch import load_file
    single = quantize(tiny_llama(), bits=4.0, calib=calib_tokens(), config=config(),
                      verbose=False)
    torch.multiprocessing.spawn(_offload_worker, args=(2, str(tmp_path / "init"), str(tmp_path)),
                                nprocs=2, join=True, start_method="spawn")
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    expected = depths(single)
    for name, depth in expected.items():
        assert torch.equal(ranks[0][f"depth/{name}"], depth), name
    torch.testing.assert_close(ranks[0]["logits"], logits(single), rtol=RTOL, atol=ATOL)
    for key, value in ranks[0].items():
        assert torch.equal(ranks[1][key], value), key
