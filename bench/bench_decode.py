"""End-to-end batch-1 decode speed (issue 4 item 5): radio against f16, both in CUDA graphs.

    python3 bench/bench_decode.py                      # SmolLM2-135M and Llama-2-7B shapes
    python3 bench/bench_decode.py --models smollm2-shapes --bits 4

Models are built from their configurations with random f16 weights on the GPU (decode speed does
not depend on the weights' values): SmolLM2-135M (hidden 576, 30 layers, tied 49152-token
embedding) and Llama-2-7B. For radio, every linear layer of the decoder blocks (the layers
radio.quantize replaces by default) becomes a RadioLinear holding a random packed layer whose
all-in size is the requested bits per weight (bench_gemm.make_layer: depths spread around the
mean, 0..8 bits); embeddings, norms and the output head stay f16, as in a quantized model.

One decode step = one token through the whole model (embedding, every block, norm, output head)
at batch 1, captured once in a CUDA graph and replayed; tokens/s = 1 / median step time. By
default the step runs without a KV cache (attention over one position): the weights are what a
batch-1 decode step streams, the attention over a few hundred cached positions adds ~2% of the
7B weight bytes. `--static-cache` runs the step against a transformers StaticCache holding
--context positions instead (on the GPU machine's transformers 5.17 its graph replay hit a
device-side index assert, so it is not the default); the output names the mode of every row.
"""
from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gemm import (add_depth_orders_argument, depth_order_tag, make_layer,  # noqa: E402
                        stored_bpw)

from radio.nn import RadioLinear  # noqa: E402

CONFIGS = {
    "smollm2-shapes": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                           tie_word_embeddings=True, max_position_embeddings=8192),
    "llama2-7b-shapes": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                             max_position_embeddings=4096),
}


def build(name: str) -> nn.Module:
    import transformers

    cfg = transformers.LlamaConfig(**CONFIGS[name])
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float16)
    return model.eval()


def block_linears(model: nn.Module):
    for name, module in model.model.layers.named_modules():
        if isinstance(module, (nn.Linear, RadioLinear)):
            yield name, module


def swap_in_radio(model: nn.Module, bpw: float, depth_order: str = "random") -> float:
    """Replace every decoder-block linear by a random packed layer at `bpw` with its units'
    depths in `depth_order` (bench_gemm.choose_depths); returns the all-in bits per weight over
    those layers."""
    bits = weights = 0.0
    for i, (name, module) in enumerate(list(block_linears(model))):
        n, k = module.out_features, module.in_features
        layer = make_layer(n, k, bpw, seed=1000 + i, depth_order=depth_order)
        bits += stored_bpw(layer) * n * k
        weights += n * k
        radio_linear = RadioLinear(n, k, layer["rows_per_group"], "laplace", layer["row_perm"],
                                   layer["col_perm"], layer["depth"], layer["scale"],
                                   layer["loc"], layer["qweight"], None, dtype=torch.float16)
        parent = model.model.layers.get_submodule(name.rsplit(".", 1)[0])
        setattr(parent, name.rsplit(".", 1)[1], radio_linear)
    torch.cuda.empty_cache()
    return bits / weights


def static_cache(model: nn.Module, length: int):
    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    kwargs = dict(config=model.config, max_cache_len=length)
    for key, value in (("max_batch_size", 1), ("batch_size", 1), ("device", "cuda"),
                       ("dtype", torch.float16)):
        if key in params:
            kwargs[key] = value
    return StaticCache(**kwargs)


def time_steps(step, reps: int = 50) -> float:
    """Median milliseconds of one replay of `step` captured in a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return statistics.median(times)


_CACHE_PROBE = """
import torch, transformers, sys
sys.path.insert(0, {here!r})
from bench_decode import static_cache
cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
with torch.device("cuda"):
    m = transformers.AutoModelForCausalLM.from_config(cfg).eval()
cache = static_cache(m, 24)
with torch.no_grad():
    prefix = torch.randint(0, 100, (1, 16), device="cuda")
    m(input_ids=prefix, past_key_values=cache, use_cache=True,
      cache_position=torch.arange(16, device="cuda"))
    pos = torch.tensor([16], device="cuda")
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    out = m(input_ids=tok, past_key_values=cache, use_cache=True, cache_position=pos,
            position_ids=pos[None]).logits[:, -1]
    full = m(input_ids=torch.cat([prefix, tok], 1)).logits[:, -1]
torch.cuda.synchronize()
assert (out - full).abs().max() < 1e-3, "static-cache step disagrees with a full forward"
"""


def static_cache_works() -> bool:
    """Runs a tiny static-cache decode in a subprocess: a device-side assert there (seen with
    some transformers versions) would otherwise poison this process's CUDA context."""
    import subprocess

    code = _CACHE_PROBE.format(here=str(Path(__file__).resolve().parent))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  static KV cache probe failed (transformers {__import__('transformers').__version__}"
              f"): {done.stderr.strip().splitlines()[-1][:160] if done.stderr.strip() else ''}",
              flush=True)
    return done.returncode == 0


@torch.no_grad()
def decode_step_ms(model: nn.Module, context: int, use_cache: bool) -> tuple:
    """(median ms per decode step, how the step was run)."""
    token = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    if not use_cache:
        def step():
            return model(input_ids=token, use_cache=False).logits

        return time_steps(step), "one-token forward, no KV cache, CUDA graph"
    try:
        cache = static_cache(model, context + 8)
        prefix = torch.randint(0, model.config.vocab_size, (1, context), device="cuda")
        model(input_ids=prefix, past_key_values=cache, use_cache=True,
              cache_position=torch.arange(context, device="cuda"))
        position = torch.tensor([context], device="cuda")

        def step():
            # the same position every replay: the cache slot is overwritten, the work is a
            # decode step's (attention over context + 1 positions)
            return model(input_ids=token, past_key_values=cache, use_cache=True,
                         cache_position=position, position_ids=position[None]).logits

        return time_steps(step), f"static KV cache, {context} positions, CUDA graph"
    except Exception as error:  # noqa: BLE001 - reported, then the simpler step is timed
        print(f"  static cache under graph capture failed ({type(error).__name__}: "
              f"{str(error)[:120]}); timing a one-token forward without a cache", flush=True)
        torch.cuda.synchronize()

        def step():
            return model(input_ids=token, use_cache=False).logits

        return time_steps(step), "one-token forward, no KV cache, CUDA graph"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--bits", type=float, nargs="+", default=[4.0, 3.0])
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--static-cache", action="store_true",
                   help="time the step against a StaticCache of --context positions")
    p.add_argument("--compare-fmma", action="store_true",
                   help="also time each radio model with the fmma kernel switched the other way "
                        "(radio._cuda.set_fmma_tokens), in the same run")
    p.add_argument("--compare-launch", action="store_true",
                   help="also time each radio model with programmatic dependent launch the "
                        "other way (radio._cuda.set_pdl: radio-pdl or radio-nopdl), and "
                        "launched as before session 14 (radio-old: no PDL and a fresh "
                        "workspace zeroed by a memset per layer call, the layers' kept "
                        "workspaces set aside)")
    p.add_argument("--compare-defer", action="store_true",
                   help="also time each radio model with the K split's output written by a "
                        "kernel after the grid on every K-split gemv / hgemv layer "
                        "(radio-defer) and on none (radio-nodefer), against the library's rule "
                        "(radio: radio._cuda.set_defer_output; bench/KERNELS.md sessions 18-19)")
    add_depth_orders_argument(p)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_decode needs a CUDA device")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    import transformers

    rows = []
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    use_cache = args.static_cache and static_cache_works()
    print(f"{'model':>18} {'weights':>9} {'bpw':>7} {'ms/token':>9} {'tokens/s':>9} {'speedup':>8}")
    for name in args.models:
        model = build(name)
        ms16, how = decode_step_ms(model, args.context, use_cache)
        rows.append(dict(model=name, weights="f16", bpw=16.0, ms=ms16, tokens_per_s=1e3 / ms16,
                         speedup=1.0, step=how))
        print(f"{name:>18} {'f16':>9} {16.0:>7.3f} {ms16:>9.3f} {1e3 / ms16:>9.1f} {1.0:>7.2f}x"
              f"   ({how})", flush=True)
        for bpw, order in [(b, o) for b in args.bits for o in args.depth_orders]:
            achieved = swap_in_radio(model, bpw, order)
            from radio._ext import _cuda
            default_fmma = _cuda.fmma_tokens()  # (min, max, large max): 1 token outside by default
            default_pdl = _cuda.pdl()
            # (label, fmma token range, programmatic dependent launch, kept workspaces,
            # deferred K-split output: None is the library's rule)
            variants = [("radio", default_fmma, default_pdl, True, None)]
            if args.compare_fmma:
                one_on = default_fmma[0] <= 1 <= default_fmma[1]
                variants.append(("radio-nofmma", (1, 0, 0), default_pdl, True, None) if one_on
                                else ("radio-fmma", (1, 32, 32), default_pdl, True, None))
            if args.compare_launch:
                variants.append(("radio-nopdl" if default_pdl else "radio-pdl", default_fmma,
                                 not default_pdl, True, None))
                variants.append(("radio-old", default_fmma, False, False, None))
            if args.compare_defer:
                variants.append(("radio-defer", default_fmma, default_pdl, True, True))
                variants.append(("radio-nodefer", default_fmma, default_pdl, True, False))
            for label, fmma_range, pdl, keep, defer in variants:
                _cuda.set_fmma_tokens(*fmma_range)
                _cuda.set_pdl(pdl)
                _cuda.set_defer_output(defer)
                kept = {mod: mod.workspace for mod in model.modules()
                        if isinstance(mod, RadioLinear)}
                if not keep:
                    for mod in kept:
                        mod.workspace = None
                try:
                    ms, how = decode_step_ms(model, args.context, use_cache)
                finally:
                    _cuda.set_fmma_tokens(*default_fmma)
                    _cuda.set_pdl(default_pdl)
                    _cuda.set_defer_output(None)
                    for mod, ws in kept.items():
                        mod.workspace = ws
                label += depth_order_tag(order)
                rows.append(dict(model=name, weights=label, bpw=achieved, ms=ms,
                                 tokens_per_s=1e3 / ms, speedup=ms16 / ms, step=how,
                                 depth_order=order))
                print(f"{name:>18} {label:>9} {achieved:>7.3f} {ms:>9.3f} {1e3 / ms:>9.1f} "
                      f"{ms16 / ms:>7.2f}x   ({how})", flush=True)
        del model
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
