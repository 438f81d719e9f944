"""Kernel benchmark: radio::qlinear vs torch.nn.functional.linear in f16 (cuBLAS), on one GPU.

For each shape (N x K) and effective rate, builds random packed layers on the GPU whose all-in
size (docs/format.md "Size": qweight, scale, loc, col_perm, depth, row_perm) is the target bits per
weight at gs = 256, checks radio against a float32 dequantize-then-matmul once per shape, then
times both ops captured in CUDA graphs, rotating through enough weight copies that every call
reads its weights from HBM (more than 2x the L2). Prints a table:

  shape, bpw (achieved), tokens, f16 us, radio us, speedup, fraction of the measured HBM read
  bandwidth that radio's reads reach ("bytes the kernel must read" = every tensor the kernel
  reads as it is passed to it: int32 permutations, the int32 unit offsets, x) / time / read bw,
  the same fraction for f16, and the kernel that ran (cuda/select_config.cu: stream_h2 (one
  token, f16, sm_90 layers of >= 16384 chunk-units: the stream kernel's half2 consumers,
  stream_h2.cuh; stream_h2g1 with 8 consumer warps), gemv_h2 (one token, f16:
  hgemv_kernel.cuh), gemv, fmma,
  stream<groups> on sm_90 layers of >= 4096 chunk-units at 4..16 tokens, qmma, dequant / kernel
  for prefill).

The read bandwidth is bytes / time of a 2 GiB torch.sum (reads only); the copy bandwidth (read +
write bytes of a 2 GiB device-to-device copy) is printed for reference.
Usage: python bench/bench_gemm.py [--quick] [--tokens 1 4 8 16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

from radio import ops
from radio._ext import _cuda
from radio.format import LayerGeometry, UNIT

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (8192, 8192), (28672, 8192),
          (8192, 28672), (49152, 12288)]
RATES = [2.5, 3.0, 3.5, 4.0, 4.5]
TOKENS = [1, 16]
PREFILL_TOKENS = 2048
PREFILL_RATE = 4.0
GS = 256
L2_BYTES = 50 * 2 ** 20
DEFAULT_GEMV_WAVES = 6  # cuda/select_config.cu
DEFAULT_H2_WAVES = 0  # the half2 one-token kernel's rule (2 or 4 waves), cuda/select_config.cu
DEFAULT_ONE_TOKEN_WAVES = 1  # gemv's at one token below 16384 chunk-units, the same file
DEFAULT_GEMV_MAX_TOKENS = 4  # cuda/select_config.cu
DEFAULT_STREAM_GROUPS = 2  # cuda/select_config.cu
DEFAULT_STREAM_STAGERS = 2  # stager warps per xs buffer, cuda/select_config.cu


def stream_setting(path: str) -> tuple:
    """'stream<groups>[s<stagers per buffer>][b<most blocks>]' -> (groups, stagers, blocks);
    blocks 0: one per SM (the default)."""
    rest, _, blocks = path[len("stream"):].partition("b")
    groups, _, stagers = rest.partition("s")
    return (int(groups), int(stagers) if stagers else DEFAULT_STREAM_STAGERS,
            int(blocks) if blocks else 0)


def path_name(cfg: dict) -> str:
    """The kernel an f16 call with this launch configuration runs (_cuda.config): its "kernel",
    or stream_h2 / gemv_h2 where one token takes the stream kernel's half2 consumers
    (stream_h2.cuh) / the half2 kernel (hgemv_kernel.cuh)."""
    if cfg["kernel"] == "gemv" and cfg["stream_h2"]:
        return "stream_h2"
    return "gemv_h2" if cfg["kernel"] == "gemv" and cfg["gemv_h2"] else cfg["kernel"]


def one_token_knobs(path: str) -> tuple:
    """(set_stream_h2 arguments, set_gemv_h2_min_chunk_units value) that put an f16 one-token
    call on `path`: stream_h2[g<groups>], gemv_h2 or gemv."""
    if path.startswith("stream_h2"):
        groups = int(path[len("stream_h2g"):]) if path.startswith("stream_h2g") else 2
        return (0, groups), -1
    return (-1, 2), (0 if path == "gemv_h2" else -1)


DEPTH_ORDERS = ("random", "sorted")


def depth_order_tag(order: str) -> str:
    """What a row of this depth order carries after its label: nothing for random, @sorted."""
    return "" if order == "random" else f"@{order}"


def add_depth_orders_argument(parser: argparse.ArgumentParser) -> None:
    """--depth-orders, as bench_gemm.py and bench_decode.py take it (choose_depths' orders)."""
    parser.add_argument("--depth-orders", nargs="+", default=["random"], choices=DEPTH_ORDERS,
                        help="order of the units' depths within a chunk: random, or sorted "
                             "deepest first as radio.quantize writes layers (rows tagged "
                             "@sorted); each order gets its own layers")


def choose_depths(n: int, k: int, gs: int, bpw: float, gen: torch.Generator,
                  order: str = "random") -> torch.Tensor:
    """uint8 [C, U] depths (spread around the mean, sum exact) so the layer is `bpw` all-in.

    order "random": the units' depths in random order within a chunk; "sorted": deepest first
    in every chunk, as radio.quantize writes layers (grouping.column_order sorts a chunk's columns
    by score and the allocation gives higher scores more bits), so a K split of equal unit counts
    gets its chunk's deepest units in its first split."""
    if order not in DEPTH_ORDERS:
        raise ValueError(f"depth order {order!r} is not one of {DEPTH_ORDERS}")
    geo = LayerGeometry(n, k, gs)
    c, u = geo.chunks, geo.units
    index_bits = bpw * n * k - 8 * geo.side_bytes(False)
    rows = torch.tensor([geo.rows_in_chunk(i) for i in range(c)], dtype=torch.float64)
    # words = sum_c rows_c * D_c; with equal chunks this is gs * sum(depth)
    total = int(round(index_bits / (32 * float(rows.mean()))))
    if not 0 <= total <= 8 * c * u:
        raise ValueError(f"rate {bpw} bpw is not reachable for {n}x{k} (needs depth sum {total})")
    mean = total / (c * u)
    d = torch.round(mean + 1.2 * torch.randn(c * u, generator=gen, dtype=torch.float64))
    d = d.clamp(0, 8).to(torch.int64)
    # fix the sum exactly by moving random units up or down within 0..8
    while int(d.sum()) != total:
        diff = total - int(d.sum())
        step = 1 if diff > 0 else -1
        movable = ((d < 8) if step > 0 else (d > 0)).nonzero().flatten()
        pick = movable[torch.randperm(movable.numel(), generator=gen)[:abs(diff)]]
        d[pick] += step
    d = d.view(c, u)
    if order == "sorted":
        d = torch.sort(d, dim=1, descending=True).values
    return d.to(torch.uint8)


def make_layer(n: int, k: int, bpw: float, seed: int, quantizer: int = 0,
               device: str = "cuda", depth_order: str = "random") -> dict:
    """A random packed layer at `bpw` (any bit pattern of qweight is a valid set of indices);
    `depth_order` as choose_depths'."""
    gen = torch.Generator().manual_seed(seed)
    geo = LayerGeometry(n, k, GS)
    c, u, kp = geo.chunks, geo.units, geo.padded_in
    depth = choose_depths(n, k, GS, bpw, gen, depth_order).to(device)
    words = geo.qweight_words(depth.cpu().numpy())
    dgen = torch.Generator(device=device).manual_seed(seed)
    qweight = torch.randint(-2 ** 31, 2 ** 31, (words,), dtype=torch.int64, device=device,
                            generator=dgen).to(torch.int32)
    pos_depth = depth.repeat_interleave(UNIT, dim=1)
    scale = (torch.rand(c, kp, device=device, generator=dgen) * 0.01 + 0.001).half()
    loc = (torch.randn(c, kp, device=device, generator=dgen) * 0.01).half()
    col_perm = torch.argsort(torch.rand(c, k, device=device, generator=dgen), dim=1).to(torch.int32)
    if kp > k:
        col_perm = torch.cat([col_perm, torch.full((c, kp - k), k, dtype=torch.int32,
                                                   device=device)], dim=1)
    pad = col_perm == k
    scale[(pos_depth == 0) | pad] = 0
    loc[pad] = 0
    row_perm = torch.randperm(n, device=device, generator=dgen).to(torch.int32)
    return ops.prepare(qweight=qweight, scale=scale, loc=loc, depth=depth, row_perm=row_perm,
                       col_perm=col_perm, bias=None, out_features=n, in_features=k,
                       rows_per_group=GS, quantizer=quantizer)


def stored_bpw(layer: dict) -> float:
    geo = LayerGeometry(layer["out_features"], layer["in_features"], layer["rows_per_group"])
    total = geo.side_bytes(layer["bias"] is not None) + 4 * layer["qweight"].numel()
    return 8.0 * total / (geo.out_features * geo.in_features)


def kernel_read_bytes(layer: dict, tokens: int) -> int:
    """Bytes of every tensor the kernel reads, as passed (int32 permutations and offsets; not the
    work quantiles, 4 KB of which a stream block reads two to four entries)."""
    names = ("qweight", "scale", "loc", "depth", "row_perm", "col_perm", "unit_offset")
    b = sum(layer[nm].numel() * layer[nm].element_size() for nm in names)
    return b + tokens * layer["in_features"] * 2


def time_graph(fn_calls, reps: int = 5) -> float:
    """Median microseconds per call of a CUDA graph replaying `fn_calls` (a list of thunks)."""
    for f in fn_calls[:2]:
        f()  # warm up outside the capture (workspace sizes, cuBLAS handles, lazy init)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fn_calls:
            f()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(fn_calls))
    del graph
    return statistics.median(times)


def read_bandwidth() -> float:
    """Bytes read per second by a large reduction (torch.sum of 2 GiB of f16, f32 accumulation):
    the HBM read ceiling the kernels' bandwidth fractions are taken against."""
    a = torch.empty(2 ** 30, dtype=torch.float16, device="cuda").normal_()
    us = time_graph([lambda: a.sum(dtype=torch.float32)] * 10)
    del a
    return 2 * 2 ** 30 / (us * 1e-6)


def copy_bandwidth() -> float:
    """(bytes read + bytes written) per second of a large device-to-device copy."""
    n = 2 ** 31
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    b = torch.empty_like(a)
    us = time_graph([lambda: b.copy_(a)] * 10)
    del a, b
    return 2 * n / (us * 1e-6)


def check(layer: dict, tokens: int, gen: torch.Generator) -> float:
    n, k = layer["out_features"], layer["in_features"]
    w = ops.dequantize(layer["qweight"], layer["scale"], layer["loc"], layer["depth"],
                       layer["row_perm"], layer["col_perm"], n, k, GS, layer["quantizer"])
    x = torch.randn(tokens, k, device="cuda", generator=gen).half()
    ref = x.float() @ w.T
    y = ops.qlinear(x, **layer).float()
    del w
    return float((y - ref).norm() / ref.norm())


def copies_for(bytes_per_copy: int) -> int:
    return max(2, math.ceil(2 * L2_BYTES / bytes_per_copy) + 1)


def run(shapes, rates, tokens_list, prefill: bool, out_rows: list, bw: float,
        gemv_waves=(), compare_small: bool = False, compare_fmma: bool = False,
        stream_groups=(), stream_stagers=(), stream_blocks=(), compare_h2: bool = False,
        h2_groups=(), compare_launch: bool = False, compare_fence: bool = False,
        depth_orders=("random",), compare_quantiles: bool = False,
        unit_weights=(), compare_defer: bool = False) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    default_h2 = _cuda.gemv_h2_min_chunk_units()  # f16 one-token calls on the half2 kernel
    default_stream_h2 = _cuda.stream_h2()  # ... or on the stream kernel's half2 consumers
    default_fmma = _cuda.fmma_tokens()  # (min, max, max on very large layers) for fmma
    fmma_on, fmma_off = (1, 32, 32), (1, 0, 0)
    default_stream = _cuda.stream_tokens()
    stream_on, stream_off = (1, 16), (1, 0)
    default_pdl = _cuda.pdl()  # programmatic dependent launch (--compare-launch flips it)
    # the stream kernel's ranges at the work quantiles (on, min units per block)
    default_quantiles = _cuda.stream_quantiles()
    for n, k in shapes:
        w16 = [torch.randn(n, k, device="cuda", generator=gen).half() * 0.02
               for _ in range(copies_for(2 * n * k))]
        checked = False
        for bpw, order in [(b, o) for b in rates for o in depth_orders]:
            ntok = list(tokens_list) + ([PREFILL_TOKENS] if prefill and bpw == PREFILL_RATE else [])
            # rows of a depth order other than random say it after their path (@sorted)
            tag = depth_order_tag(order)
            first = make_layer(n, k, bpw, seed=n + k, depth_order=order)
            layers = [first] + [make_layer(n, k, bpw, seed=n + k + i, depth_order=order)
                                for i in range(1, copies_for(kernel_read_bytes(first, 1)))]
            if not checked:
                for t in sorted({1, 16, *[x for x in tokens_list if x <= 64]}):
                    # (fmma limits, stream limits, stream groups) of each check
                    fmma_ranges = ([fmma_off, fmma_on] if compare_fmma and t <= 32
                                   else [default_fmma])
                    settings = [(f, default_stream, DEFAULT_STREAM_GROUPS) for f in fmma_ranges]
                    if t <= 16:
                        settings += [(default_fmma, stream_on, g) for g in stream_groups]
                    h2_settings = ([one_token_knobs(p) for p in ["stream_h2", "gemv_h2", "gemv"]]
                                   if compare_h2 and t == 1 else
                                   [(default_stream_h2, default_h2)])
                    settings = [s + (h,) for s in settings for h in h2_settings]
                    for fmma_range, stream_range, groups, (stream_h2, h2) in settings:
                        _cuda.set_fmma_tokens(*fmma_range)
                        _cuda.set_stream_tokens(*stream_range)
                        _cuda.set_stream_groups(groups)
                        _cuda.set_stream_h2(*stream_h2)
                        _cuda.set_gemv_h2_min_chunk_units(h2)
                        err = check(first, t, gen)
                        kernel = path_name(_cuda.config(t, n, k, GS))
                        _cuda.set_fmma_tokens(*default_fmma)
                        _cuda.set_stream_tokens(*default_stream)
                        _cuda.set_stream_groups(DEFAULT_STREAM_GROUPS)
                        _cuda.set_stream_h2(*default_stream_h2)
                        _cuda.set_gemv_h2_min_chunk_units(default_h2)
                        status = "ok" if err < 4e-3 else "FAIL"
                        print(f"check {n}x{k} {bpw} bpw tokens={t} ({kernel}): rel err {err:.2e} "
                              f"{status}", flush=True)
                        if err >= 4e-3:
                            sys.exit(f"radio disagrees with dequantize-then-matmul on {n}x{k}")
                checked = True
            for tokens in ntok:
                x = torch.randn(tokens, k, device="cuda", generator=gen).half()
                calls = max(len(layers), len(w16), 20)
                f16_calls = [(lambda w=w16[i % len(w16)]: torch.nn.functional.linear(x, w))
                             for i in range(calls)]
                radio_calls = [(lambda L=layers[i % len(layers)]: ops.qlinear(x, **L))
                               for i in range(calls)]
                # --compare-launch: the same calls without the layers' kept workspaces (a
                # fresh one, zeroed by a memset node before each kernel, as before session 14)
                fresh = [{name: v for name, v in L.items() if name != "workspace"} for L in layers]
                fresh_calls = [(lambda L=fresh[i % len(fresh)]: ops.qlinear(x, **L))
                               for i in range(calls)]
                # The first f16 graph after a shape's setup has timed up to 18% slow (500 against
                # 422 us on 49152x12288, every replay of it; RESULTS.md sessions 4 and 6): the
                # faster of two graphs is the f16 time.
                t16 = min(time_graph(f16_calls), time_graph(f16_calls))
                paths = (["dequant", "kernel"] if tokens > 64 else
                         [path_name(_cuda.config(tokens, n, k, GS))])
                extra = []
                if compare_h2 and tokens == 1:
                    # the stream kernel's half2 consumers, the half2 kernel and the f32 one
                    extra += ["stream_h2"] + [f"stream_h2g{g}" for g in h2_groups if g != 2]
                    extra += ["gemv_h2", "gemv"]
                if compare_small and 1 < tokens <= 8:
                    extra += ["gemv", "qmma"]  # the threshold between the two
                if compare_fmma and tokens <= 32:
                    # fmma side by side with the kernel this count takes without it
                    _cuda.set_fmma_tokens(*fmma_off)
                    extra += ["fmma", _cuda.config(tokens, n, k, GS)["kernel"]]
                    _cuda.set_fmma_tokens(*default_fmma)
                if tokens <= 16 and stream_groups:
                    # the stream kernel at each group count, and the kernel taken without it
                    _cuda.set_stream_tokens(*stream_off)
                    without = _cuda.config(tokens, n, k, GS)["kernel"]
                    _cuda.set_stream_tokens(*default_stream)
                    bases = ([f"stream{g}s{s}" for g in stream_groups for s in stream_stagers]
                             if stream_stagers else [f"stream{g}" for g in stream_groups])
                    for base in bases:
                        extra += [base] + [f"{base}b{b}" for b in stream_blocks]
                    extra += [without]
                if paths == ["stream"]:  # the default: label it with its group count
                    paths = [f"stream{DEFAULT_STREAM_GROUPS}"]
                paths += [p for i, p in enumerate(extra) if p not in paths and p not in extra[:i]]
                for path in paths:
                    kernel = ("stream_h2" if path.startswith("stream_h2") else
                              "stream" if path.startswith("stream") else path)
                    if kernel in ("gemv", "gemv_h2", "stream_h2"):
                        stream_h2, h2 = one_token_knobs(path)
                        _cuda.set_stream_h2(*stream_h2)
                        _cuda.set_gemv_h2_min_chunk_units(h2)
                    ops.PREFILL_PATH = path if tokens > 64 else "dequant"
                    _cuda.set_fmma_tokens(*(fmma_on if path == "fmma" else fmma_off))
                    _cuda.set_stream_tokens(*(stream_on if kernel == "stream" else stream_off))
                    if kernel == "stream":
                        groups, stagers, blocks = stream_setting(path)
                        _cuda.set_stream_groups(groups)
                        _cuda.set_stream_stagers(stagers)
                        _cuda.set_stream_max_blocks(blocks)
                    if tokens <= 8 and path != "fmma":
                        _cuda.set_gemv_max_tokens(
                            8 if kernel in ("gemv", "gemv_h2", "stream_h2") else 0)
                    # the row is labelled with the kernel that runs, or not timed
                    cfg = _cuda.config(tokens, n, k, GS) if tokens <= 64 else {}
                    runs = path_name(cfg) if cfg else path
                    # (programmatic dependent launch, kept workspace, every thread fencing at
                    # the K split's end, the stream kernel's ranges at the layer's work
                    # quantiles, the K split's output deferred: None is the library's rule):
                    # the default launch first, then with --compare-launch the other three
                    # launches, with --compare-fence the fences before session 15, with
                    # --compare-quantiles the stream ranges at equal unit counts and with
                    # --compare-defer the output the other way, labelled by what differs
                    modes = [(default_pdl, True, False, True, None)]
                    if compare_launch and tokens <= 16:
                        modes += [(default_pdl, False, False, True, None),
                                  (not default_pdl, True, False, True, None),
                                  (not default_pdl, False, False, True, None)]
                    if compare_fence and tokens <= 64:
                        modes += [(default_pdl, True, True, True, None)]
                    # --compare-defer: the K split's output the other way from the library's
                    # rule (set_defer_output), only where gemv or hgemv split the layer
                    splits = cfg.get("h2_splits" if kernel == "gemv_h2" else "splits", 1)
                    if compare_defer and kernel in ("gemv", "gemv_h2") and splits > 1:
                        modes += [(default_pdl, True, False, True,
                                   not cfg.get("defer_output", False))]
                    # (only where the call uses the table: elsewhere /equal would time the same
                    # kernel again)
                    uses_table = (kernel in ("stream", "stream_h2")
                                  and cfg.get("stream_quantiles", False))
                    if compare_quantiles and uses_table:
                        modes += [(default_pdl, True, False, False, None)]
                    timed = []
                    if runs == kernel:
                        for pdl, kept, fence_all, quantiles, defer in modes:
                            _cuda.set_pdl(pdl)
                            _cuda.set_fence_all(fence_all)
                            _cuda.set_stream_quantiles(quantiles, default_quantiles[1])
                            _cuda.set_defer_output(defer)
                            label = "+".join(([] if pdl == default_pdl else
                                              ["pdl" if pdl else "nopdl"])
                                             + ([] if kept else ["memset"])
                                             + (["fenceall"] if fence_all else [])
                                             + ([] if quantiles else ["equal"])
                                             + ([] if defer is None else
                                                ["defer" if defer else "nodefer"]))
                            timed.append((path + (f"/{label}" if label else ""),
                                          time_graph(radio_calls if kept else fresh_calls)))
                        _cuda.set_pdl(default_pdl)
                        _cuda.set_fence_all(False)
                        _cuda.set_defer_output(None)
                        _cuda.set_stream_quantiles(*default_quantiles)
                        if uses_table:
                            # --unit-weights: the layers' tables rebuilt at other unit weights
                            # (ops.work_quantiles), the default launch otherwise
                            own = [L["work_quantiles"] for L in layers]
                            for w in unit_weights:
                                for L in layers:
                                    L["work_quantiles"] = ops.work_quantiles(L["depth"],
                                                                             unit_weight=w)
                                timed.append((f"{path}/uw{w}", time_graph(radio_calls)))
                            for L, q in zip(layers, own):
                                L["work_quantiles"] = q
                    ops.PREFILL_PATH = "dequant"
                    _cuda.set_gemv_h2_min_chunk_units(default_h2)
                    _cuda.set_stream_h2(*default_stream_h2)
                    _cuda.set_gemv_max_tokens(DEFAULT_GEMV_MAX_TOKENS)
                    _cuda.set_fmma_tokens(*default_fmma)
                    _cuda.set_stream_tokens(*default_stream)
                    _cuda.set_stream_groups(DEFAULT_STREAM_GROUPS)
                    _cuda.set_stream_stagers(DEFAULT_STREAM_STAGERS)
                    _cuda.set_stream_max_blocks(0)
                    if not timed:
                        print(f"  ({path} cannot take {n}x{k} at {tokens} tokens: {runs} would run)")
                        continue
                    read = kernel_read_bytes(first, tokens)
                    for label, trad in timed:
                        row = dict(n=n, k=k, bpw=round(stored_bpw(first), 4), target_bpw=bpw,
                                   depth_order=order, tokens=tokens, path=label,
                                   f16_us=round(t16, 2),
                                   radio_us=round(trad, 2), speedup=round(t16 / trad, 3),
                                   radio_bw_frac=round(read / (trad * 1e-6) / bw, 3),
                                   f16_bw_frac=round((2 * n * k + 2 * tokens * k)
                                                     / (t16 * 1e-6) / bw, 3))
                        out_rows.append(row)
                        print(f"{n:>6}x{k:<6} {row['bpw']:>6.3f} {tokens:>5} {t16:>10.2f} "
                              f"{trad:>10.2f} {row['speedup']:>8.2f}x "
                              f"{row['radio_bw_frac']:>7.2f} {row['f16_bw_frac']:>7.2f} "
                              f"{label}{tag}",
                              flush=True)
            if gemv_waves:
                # the decode path's K-split sweep (1 token, every rate): waves of blocks per
                # launch
                x = torch.randn(1, k, device="cuda", generator=gen).half()
                radio_calls = [(lambda L=layers[i % len(layers)]: ops.qlinear(x, **L))
                               for i in range(max(len(layers), 20))]
                # (the fmma kernel splits K by the same waves knob)
                sweeps = [(f, h) for f in [fmma_off] + ([fmma_on] if compare_fmma else [])
                          for h in ([0, -1] if compare_h2 else [default_h2])]
                _cuda.set_stream_h2(-1)  # (the stream kernel has no K split to sweep)
                for fmma_range, h2 in sweeps:
                    _cuda.set_fmma_tokens(*fmma_range)
                    _cuda.set_gemv_h2_min_chunk_units(h2)
                    h2_runs = path_name(_cuda.config(1, n, k, GS)) == "gemv_h2"
                    for waves in gemv_waves:
                        # the knob of the kernel that runs (gemv, or the half2 one)
                        _cuda.set_gemv_waves(DEFAULT_GEMV_WAVES if h2_runs else waves,
                                             waves if h2_runs else DEFAULT_H2_WAVES,
                                             DEFAULT_ONE_TOKEN_WAVES if h2_runs else waves)
                        cfg = _cuda.config(1, n, k, GS)
                        name = path_name(cfg)
                        splits, units = ((cfg["h2_splits"], cfg["h2_units_per_split"])
                                         if name == "gemv_h2" else
                                         (cfg["splits"], cfg["units_per_split"]))
                        trad = time_graph(radio_calls)
                        print(f"  {name}{tag} sweep {n}x{k} at {bpw} bpw: waves {waves:>2} splits "
                              f"{splits:>3} units/block {units:>3}: "
                              f"{trad:8.2f} us", flush=True)
                        out_rows.append(dict(n=n, k=k, target_bpw=bpw, depth_order=order, tokens=1,
                                             path=f"{name}-sweep", waves=waves,
                                             splits=splits, radio_us=trad))
                _cuda.set_fmma_tokens(*default_fmma)
                _cuda.set_gemv_h2_min_chunk_units(default_h2)
                _cuda.set_stream_h2(*default_stream_h2)
                _cuda.set_gemv_waves(DEFAULT_GEMV_WAVES, DEFAULT_H2_WAVES,
                                     DEFAULT_ONE_TOKEN_WAVES)
            del layers, first
        del w16
        torch.cuda.empty_cache()


def layer_shape(text: str) -> tuple:
    """argparse type of --shapes: 'NxK' (out x in features, both positive) -> (N, K)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"shape {text!r} is not NxK with positive integers, "
                                         "e.g. 4096x11008")
    return int(parts[0]), int(parts[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two shapes, two rates")
    ap.add_argument("--shapes", nargs="+", type=layer_shape, default=None, metavar="NxK",
                    help="layer shapes out x in (default: the seven of SHAPES; --quick: two)")
    ap.add_argument("--no-prefill", action="store_true")
    ap.add_argument("--rates", type=float, nargs="+", default=None,
                    help="effective bits per weight (default: 2.5 3 3.5 4 4.5; --quick: 3 4)")
    ap.add_argument("--tokens", type=int, nargs="+", default=TOKENS, help="token counts (1..64)")
    ap.add_argument("--compare-small", action="store_true",
                    help="time 2..8 tokens on both the gemv and the qmma kernel (the threshold)")
    ap.add_argument("--compare-stream", type=int, nargs="*", default=[], metavar="GROUPS",
                    help="also time 1..16 tokens on the stream kernel (sm_90) with these consumer "
                         "group counts (1: 8 warps, 2: 16), beside the default kernel")
    ap.add_argument("--stream-stagers", type=int, nargs="*", default=[], choices=(1, 2),
                    metavar="N", help="with --compare-stream: time each group count at these "
                                      "stager warps per buffer (1: 4 warps, 2: 8)")
    ap.add_argument("--stream-blocks", type=int, nargs="*", default=[], metavar="N",
                    help="with --compare-stream: also time each setting with at most N blocks "
                         "(set_stream_max_blocks; default one per SM), e.g. for small layers")
    ap.add_argument("--compare-fmma", action="store_true",
                    help="time 1..32 tokens on the fmma kernel and on the kernel (gemv or qmma) "
                         "they take without it, side by side")
    ap.add_argument("--compare-h2", action="store_true",
                    help="time 1 token on the stream kernel's half2 consumers (stream_h2), the "
                         "half2 kernel (gemv_h2) and gemv side by side")
    ap.add_argument("--h2-groups", type=int, nargs="*", default=[], choices=(1, 2),
                    help="with --compare-h2: also stream_h2 with these consumer groups (x 8 warps)")
    ap.add_argument("--compare-launch", action="store_true",
                    help="up to 16 tokens: also time every row's kernel with programmatic "
                         "dependent launch the other way (/pdl or /nopdl: set_pdl), with a fresh "
                         "workspace zeroed by a memset node per call instead of the layer's kept "
                         "one (/memset), and both")
    ap.add_argument("--compare-defer", action="store_true",
                    help="gemv / hgemv rows whose layer is K-split: also time them with the "
                         "split's output the other way from the library's rule: by a kernel "
                         "after the grid (/defer) or by each chunk's last block (/nodefer) "
                         "(set_defer_output; bench/KERNELS.md sessions 18-19)")
    ap.add_argument("--compare-fence", action="store_true",
                    help="up to 64 tokens: also time every row's kernel with the K split's end "
                         "as before session 15, every thread fencing (/fenceall: set_fence_all)")
    ap.add_argument("--gemv-waves", type=int, nargs="*", default=[],
                    help="also time the 1-token path at these K-split wave counts (every rate)")
    ap.add_argument("--compare-quantiles", action="store_true",
                    help="stream kernel rows that use the layer's work quantiles (blocks of "
                         ">= 128 units): also time its blocks' ranges cut at equal unit counts, "
                         "as before session 17 (/equal: set_stream_quantiles(False))")
    ap.add_argument("--unit-weights", type=int, nargs="*", default=[], metavar="ROWS",
                    help="stream kernel rows that use the layer's work quantiles: also time "
                         "them rebuilt with "
                         "these unit weights (/uw<ROWS>: ops.work_quantiles(depth, "
                         "unit_weight=ROWS); the default is ops.WORK_UNIT_WEIGHT)")
    add_depth_orders_argument(ap)
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    copy_bw = copy_bandwidth()
    bw = read_bandwidth()
    print(f"device: {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; read bandwidth {bw / 1e12:.3f} TB/s, copy bandwidth "
          f"(read+write) {copy_bw / 1e12:.3f} TB/s", flush=True)
    shapes = args.shapes or (SHAPES[:1] + SHAPES[-1:] if args.quick else SHAPES)
    rates = args.rates or ([3.0, 4.0] if args.quick else RATES)
    print(f"{'shape':>13} {'bpw':>6} {'tok':>5} {'f16 us':>10} {'radio us':>10} {'speedup':>9} "
          f"{'bw frac':>7} {'f16 bw':>7} path")
    rows: list = []
    t0 = time.time()
    run(shapes, rates, args.tokens, not args.no_prefill, rows, bw, args.gemv_waves,
        args.compare_small, args.compare_fmma, args.compare_stream, args.stream_stagers,
        args.stream_blocks, args.compare_h2, args.h2_groups, args.compare_launch,
        args.compare_fence, args.depth_orders, args.compare_quantiles,
        args.unit_weights, args.compare_defer)
    print(f"total {time.time() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=props.name, read_bw=bw, copy_bw=copy_bw, rows=rows), f,
                      indent=1)


if __name__ == "__main__":
    main()
