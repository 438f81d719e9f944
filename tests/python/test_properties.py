"""Property-based tests (hypothesis) of the packed format, the quantizers and the bit allocation.

Hypothesis draws the shapes, group sizes, depth patterns and options; bulk arrays come from a
numpy generator seeded by a drawn integer (drawing thousands of array elements one by one through
hypothesis would be slow and shrink poorly). The oracles are docs/format.md written in numpy
(``radio.reference``) and the definitions themselves (bins of the quantizers, the rate and
distortion sums of the solver), never the code under test. The whole file runs in well under a
minute: every test has a bounded ``max_examples``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radio import _core, reference

UNIT = 32
# derandomize: CI runs the same examples every time, so a red run always reproduces.
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------------
# strategies and helpers
# ------------------------------------------------------------------------------------------------


@st.composite
def geometries(draw, max_n=48, max_k=80):
    """(N, K, gs): 1x1 layers, K below/at/above multiples of 32, gs = 1 and gs > N included."""
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(1, max_k))
    gs = draw(st.integers(1, n + 3))
    return n, k, gs


DEPTH_PATTERNS = st.sampled_from(["random", "zero", "eight", "one-value"])
SEEDS = st.integers(0, 2 ** 32 - 1)


def shape_of(n, k, gs):
    chunks, units = math.ceil(n / gs), math.ceil(k / UNIT)
    return chunks, units, units * UNIT


def make_depth(rng, chunks, units, pattern, value=None):
    if pattern == "zero":
        return np.zeros((chunks, units), np.uint8)
    if pattern == "eight":
        return np.full((chunks, units), 8, np.uint8)
    if pattern == "one-value":
        return np.full((chunks, units), rng.integers(1, 9) if value is None else value, np.uint8)
    return rng.integers(0, 9, (chunks, units)).astype(np.uint8)


def make_indices(rng, n, kp, depth, gs):
    """uint8 [N, Kp]: each unit's indices drawn below 2**depth of that unit."""
    limit = np.repeat(1 << depth.astype(np.int64), UNIT, axis=1)  # [C, Kp]
    limit = np.repeat(limit, gs, axis=0)[:n]                      # [N, Kp], rows of each chunk
    return (rng.integers(0, 1 << 8, (n, kp)) % limit).astype(np.uint8)


def make_perms(rng, n, k, gs):
    chunks, _, kp = shape_of(n, k, gs)
    row_perm = rng.permutation(n).astype(np.int32)
    col_perm = np.full((chunks, kp), k, np.int32)
    for c in range(chunks):
        col_perm[c, :k] = rng.permutation(k)
    return row_perm, col_perm


def make_weight(rng, n, k, magnitude, distribution):
    if distribution == "laplace":
        w = rng.laplace(0.0, 1.0, (n, k))
    elif distribution == "normal":
        w = rng.standard_normal((n, k))
    else:  # heavy tails plus repeated values (ties in the median, constant groups)
        w = np.round(rng.standard_t(2.0, (n, k)), 1)
    return (w * magnitude).astype(np.float32)


def group_view(n, k, gs, row_perm, col_perm):
    """Index arrays mapping permuted coordinates (prow, p < K) to chunk c and original (row, col)."""
    chunk = np.arange(n) // gs
    rows = np.broadcast_to(row_perm[:, None].astype(np.int64), (n, k))
    cols = col_perm[chunk][:, :k].astype(np.int64)
    return chunk, rows, cols


# Laplace companding of docs/format.md, float64: F and its inverse.
def laplace_cdf(z):
    return 0.5 + np.sign(z) * 0.5 * -np.expm1(-np.abs(z))


def laplace_cdf_inverse(u):
    v = u - 0.5
    with np.errstate(divide="ignore"):
        return -np.sign(v) * np.log1p(-2.0 * np.abs(v))


# ------------------------------------------------------------------------------------------------
# pack / unpack
# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(geometries(max_n=70, max_k=100), DEPTH_PATTERNS, SEEDS)
def test_pack_unpack_round_trip_equals_reference(geometry, pattern, seed):
    n, k, gs = geometry
    rng = np.random.default_rng(seed)
    chunks, units, kp = shape_of(n, k, gs)
    depth = make_depth(rng, chunks, units, pattern)
    idx = make_indices(rng, n, kp, depth, gs)
    qweight = _core.pack(idx, depth, gs)
    rows = np.array(reference.chunk_rows(n, gs))
    assert qweight.dtype == np.int32
    assert qweight.size == int((rows * depth.astype(np.int64).sum(axis=1)).sum())
    np.testing.assert_array_equal(qweight, reference.pack(idx, depth, gs))
    np.testing.assert_array_equal(_core.unpack(qweight, depth, n, gs), idx)
    np.testing.assert_array_equal(reference.unpack(qweight, depth, n, gs), idx)


@SETTINGS
@given(geometries(max_n=70, max_k=100), DEPTH_PATTERNS, SEEDS)
def test_unpack_then_pack_is_identity_on_any_words(geometry, pattern, seed):
    """Every bit of a unit row is used (32 indices x B bits = B words): any words round-trip."""
    n, k, gs = geometry
    rng = np.random.default_rng(seed)
    chunks, units, _ = shape_of(n, k, gs)
    depth = make_depth(rng, chunks, units, pattern)
    words = reference.word_starts(depth, n, gs)[2]
    qweight = rng.integers(-2 ** 31, 2 ** 31, words, dtype=np.int64).astype(np.int32)
    idx = _core.unpack(qweight, depth, n, gs)
    np.testing.assert_array_equal(idx, reference.unpack(qweight, depth, n, gs))
    np.testing.assert_array_equal(_core.pack(idx, depth, gs), qweight)


@SETTINGS
@given(geometries(), SEEDS, st.integers(0, 7))
def test_pack_refuses_an_index_that_does_not_fit_and_names_it(geometry, seed, bits):
    n, k, gs = geometry
    rng = np.random.default_rng(seed)
    chunks, units, kp = shape_of(n, k, gs)
    depth = make_depth(rng, chunks, units, "one-value", value=bits)
    idx = make_indices(rng, n, kp, depth, gs)
    row, col = int(rng.integers(0, n)), int(rng.integers(0, kp))
    idx[row, col] = 1 << bits  # one more than the unit's depth holds
    with pytest.raises(ValueError) as err:
        _core.pack(idx, depth, gs)
    message = str(err.value)
    assert f"indices[{row}, {col}] = {1 << bits}" in message and f"expected < {1 << bits}" in message


# ------------------------------------------------------------------------------------------------
# quantizers
# ------------------------------------------------------------------------------------------------

QUANTIZER_OPTIONS = st.sampled_from([("laplace", False), ("uniform", False), ("uniform", True)])
MAGNITUDES = st.sampled_from([1e-3, 0.02, 1.0, 50.0])
DISTRIBUTIONS = st.sampled_from(["laplace", "normal", "ties"])


def quantize(n, k, gs, weight, row_perm, col_perm, depth, quantizer, symmetric, refine):
    out = _core.quantize_layer(weight, row_perm, col_perm, depth, gs, quantizer, refine,
                               symmetric)
    layer = dict(out_features=n, in_features=k, rows_per_group=gs, quantizer=quantizer,
                 row_perm=row_perm, col_perm=col_perm, depth=depth, **out)
    _core.validate_layer(layer)
    return layer


def coded(layer, weight):
    """Per weight in permuted coordinates [N, K]: w, w_hat, loc, scale, depth B, index q."""
    n, k, gs = layer["out_features"], layer["in_features"], layer["rows_per_group"]
    chunk, rows, cols = group_view(n, k, gs, layer["row_perm"], layer["col_perm"])
    w_hat = _core.dequantize(layer)
    p = np.arange(k)
    loc = layer["loc"].view(np.float16).astype(np.float64)[chunk][:, :k]
    scale = layer["scale"].view(np.float16).astype(np.float64)[chunk][:, :k]
    depth = layer["depth"].astype(np.int64)[chunk][:, p // UNIT]
    q = _core.unpack(layer["qweight"], layer["depth"], n, gs)[:, :k].astype(np.int64)
    return (weight[rows, cols].astype(np.float64), w_hat[rows, cols].astype(np.float64), loc,
            scale, depth, q)


@SETTINGS
@given(geometries(), DEPTH_PATTERNS, SEEDS, QUANTIZER_OPTIONS, st.booleans(), MAGNITUDES,
       DISTRIBUTIONS)
def test_decode_encode_error_is_within_the_bin(geometry, pattern, seed, options, refine,
                                               magnitude, distribution):
    """Every index is the bin of docs/format.md that holds its weight, so |w - w_hat| is at most
    the bin's width (half of it for the uniform quantizer's inner bins); reconstruction is
    loc + scale * T_B[q]."""
    quantizer, symmetric = options
    n, k, gs = geometry
    rng = np.random.default_rng(seed)
    chunks, units, _ = shape_of(n, k, gs)
    weight = make_weight(rng, n, k, magnitude, distribution)
    row_perm, col_perm = make_perms(rng, n, k, gs)
    depth = make_depth(rng, chunks, units, pattern)
    layer = quantize(n, k, gs, weight, row_perm, col_perm, depth, quantizer, symmetric, refine)
    w, w_hat, loc, scale, b, q = coded(layer, weight)

    # Reconstruction: loc + scale * T_B[q] (float32 arithmetic; allow its rounding only).
    table = np.zeros((9, 256))
    for d in range(9):
        table[d, :2 ** d] = reference.table(quantizer, d)
    step = scale * table[b, q]
    # float32 rounding of the two terms (the sum may cancel, so bound by the terms' sizes)
    assert np.all(np.abs(w_hat - (loc + step)) <= 1e-6 * (np.abs(loc) + np.abs(step)) + 1e-30)
    assert np.all(q < (1 << b))
    zero = b == 0
    assert np.all(scale[zero] == 0) and np.all(w_hat[zero] == loc[zero])

    coded_ = (b > 0) & (scale > 0)
    levels = (1 << b).astype(np.float64)
    z = np.where(coded_, (w - loc) / np.where(coded_, scale, 1.0), 0.0)
    tol = 2e-3  # in units of one index: float32 encoding near a bin edge may round either way
    if quantizer == "laplace":
        u = levels * laplace_cdf(z)  # q = min(floor(u), 2^B - 1)
        inside = (u >= q - tol) & ((u <= q + 1 + tol) | (q == levels - 1))
        lo = laplace_cdf_inverse(q / levels)
        hi = laplace_cdf_inverse((q + 1) / levels)
    else:
        v = z + (levels - 1) / 2  # q = clamp(round(v), 0, 2^B - 1)
        inside = ((v >= q - 0.5 - tol) | (q == 0)) & ((v <= q + 0.5 + tol) | (q == levels - 1))
        # the end bins reach to -inf / +inf (the clamp)
        lo = np.where(q == 0, -np.inf, q - 0.5)
        hi = np.where(q == levels - 1, np.inf, q + 0.5)
    bad = coded_ & ~inside
    assert not bad.any(), (f"{int(bad.sum())} weights encoded outside their bin, e.g. w="
                           f"{w[bad][:3]} loc={loc[bad][:3]} scale={scale[bad][:3]} q={q[bad][:3]}")
    finite = coded_ & np.isfinite(lo) & np.isfinite(hi)
    width = scale * np.where(finite, hi - lo, 0.0)
    slack = 1e-5 * magnitude
    over = finite & (np.abs(w - w_hat) > width * (1 + 1e-3) + slack)
    assert not over.any(), f"error above the bin width at {np.argwhere(over)[:3].tolist()}"
    if quantizer == "uniform" and not refine:
        # Without refinement the levels span [min, max] of the group up to the f16 rounding of
        # loc and scale (relative 2^-11, or 2^-25 absolute among subnormals), which moves the
        # end levels by at most that rounding times (2^B - 1) / 2; so every error is within half
        # a bin plus that.
        half_range = np.maximum(levels - 1, 1) / 2
        f16 = 2.0 ** -11 * (np.abs(loc) + scale * half_range) + 2.0 ** -25 * (1 + half_range)
        err = np.abs(w - w_hat)
        assert np.all((err <= 0.5 * scale * (1 + 1e-3) + f16 * 1.01 + slack)[coded_])


@SETTINGS
@given(geometries(), SEEDS, QUANTIZER_OPTIONS, st.booleans(), MAGNITUDES, DISTRIBUTIONS)
def test_zero_bits_reconstruct_the_location(geometry, seed, options, refine, magnitude,
                                            distribution):
    """A depth-0 group stores no index: scale 0, every weight reconstructs to loc = f16(mu0),
    mu0 the lower median (laplace), the mid-range (uniform) or 0 (symmetric uniform); the
    refinement's shift is not applied at depth 0."""
    quantizer, symmetric = options
    n, k, gs = geometry
    rng = np.random.default_rng(seed)
    chunks, units, _ = shape_of(n, k, gs)
    weight = make_weight(rng, n, k, magnitude, distribution)
    row_perm, col_perm = make_perms(rng, n, k, gs)
    depth = make_depth(rng, chunks, units, "random")
    depth.flat[0] = 0
    layer = quantize(n, k, gs, weight, row_perm, col_perm, depth, quantizer, symmetric, refine)
    w_hat = _core.dequantize(layer)
    loc = layer["loc"].view(np.float16)
    scale = layer["scale"].view(np.float16)
    for c, rows_c in enumerate(reference.chunk_rows(n, gs)):
        rows = row_perm[c * gs: c * gs + rows_c]
        for p in range(k):
            if depth[c, p // UNIT]:
                continue
            col = col_perm[c, p]
            group = weight[rows, col]
            expect, _ = reference.group_code(group, 0, quantizer, symmetric)
            assert scale[c, p] == 0
            # the mid-range's float32 sum may round differently: allow one f16 step
            assert abs(float(loc[c, p]) - float(expect)) <= float(np.spacing(np.float16(expect)))
            assert np.all(w_hat[rows, col] == np.float32(loc[c, p]))


@SETTINGS
@given(geometries(), DEPTH_PATTERNS, SEEDS, QUANTIZER_OPTIONS, MAGNITUDES, DISTRIBUTIONS)
def test_refinement_never_increases_a_groups_error(geometry, pattern, seed, options, magnitude,
                                                   distribution):
    """The refinement search includes the unrefined (scale, loc), so no group gets worse."""
    quantizer, symmetric = options
    n, k, gs = geometry
    rng = np.random.default_rng(seed)
    chunks, units, _ = shape_of(n, k, gs)
    weight = make_weight(rng, n, k, magnitude, distribution)
    row_perm, col_perm = make_perms(rng, n, k, gs)
    depth = make_depth(rng, chunks, units, pattern)
    chunk = np.arange(n) // gs

    def group_sse(refine):
        layer = quantize(n, k, gs, weight, row_perm, col_perm, depth, quantizer, symmetric,
                         refine)
        w, w_hat, *_ = coded(layer, weight)
        sse = np.zeros((chunks, k))
        np.add.at(sse, (np.repeat(chunk, k), np.tile(np.arange(k), n)),
                  ((w - w_hat) ** 2).reshape(-1))
        return sse

    plain, refined = group_sse(False), group_sse(True)
    worse = refined > plain * (1 + 1e-6) + 1e-12 * magnitude ** 2
    assert not worse.any(), (f"refinement increased the error of {int(worse.sum())} groups, e.g. "
                             f"{refined[worse][:3]} > {plain[worse][:3]}")


@SETTINGS
@given(geometries(), DEPTH_PATTERNS, SEEDS, QUANTIZER_OPTIONS, MAGNITUDES)
def test_unrefined_quantizer_equals_reference(geometry, pattern, seed, options, magnitude):
    quantizer, symmetric = options
    n, k, gs = geometry
    rng = np.random.default_rng(seed)
    chunks, units, _ = shape_of(n, k, gs)
    weight = make_weight(rng, n, k, magnitude, "laplace")
    row_perm, col_perm = make_perms(rng, n, k, gs)
    depth = make_depth(rng, chunks, units, pattern)
    layer = quantize(n, k, gs, weight, row_perm, col_perm, depth, quantizer, symmetric, False)
    ref = reference.quantize_layer(weight, row_perm, col_perm, depth, gs, quantizer, symmetric)
    np.testing.assert_array_equal(layer["scale"], ref["scale"])
    np.testing.assert_array_equal(layer["loc"], ref["loc"])
    np.testing.assert_array_equal(layer["qweight"], ref["qweight"])


# ------------------------------------------------------------------------------------------------
# bit allocation
# ------------------------------------------------------------------------------------------------


@st.composite
def units_problems(draw):
    """(coef, weight, max_depth): n units with log-normal coefficients (some 0), weights rows*32."""
    seed = draw(SEEDS)
    n = draw(st.integers(1, 400))
    zero_fraction = draw(st.sampled_from([0.0, 0.1, 0.5]))
    spread = draw(st.sampled_from([0.5, 3.0, 8.0]))
    rng = np.random.default_rng(seed)
    coef = rng.lognormal(0.0, spread, n)
    coef[rng.random(n) < zero_fraction] = 0.0
    weight = 32.0 * rng.integers(1, 257, n)
    max_depth = draw(st.sampled_from([8, 8, 4, 1]))
    return coef, weight.astype(np.float64), max_depth


def distortion_of(coef, depth):
    return math.fsum(coef * np.ldexp(1.0, -2 * depth.astype(np.int64)))


def top_index_bits(coef, weight, max_depth):
    """Index bits per weight with every unit that matters (coef > 0) at max_depth."""
    return max_depth * weight[coef > 0].sum() / weight.sum()


@SETTINGS
@given(units_problems(), st.floats(0.0, 1.0), st.floats(0.0, 0.5))
def test_rate_target_is_met_from_below_within_one_unit(problem, fraction, side_fraction):
    coef, weight, max_depth = problem
    side = side_fraction * weight.sum()
    total = weight.sum()
    top = (max_depth * weight[coef > 0].sum() + side) / total  # every useful unit at max depth
    low = side / total
    target = low + fraction * (top - low)
    if target <= low:
        return  # nothing reachable above the side information
    depth, report = _core.allocate(coef, weight, target_bits=target, side_bits=side,
                                   total_weights=total, max_depth=max_depth)
    assert depth.dtype == np.uint8 and depth.shape == coef.shape
    assert depth.max(initial=0) <= max_depth and np.all(depth[coef == 0] == 0)
    rate = (float(np.dot(weight, depth)) + side) / total
    assert rate == pytest.approx(report["bits_per_weight"], rel=1e-12)
    assert rate <= target  # never above a rate target
    # ... and below it by less than one more bit of the largest unit (or nothing is left to add)
    room = target * total - (float(np.dot(weight, depth)) + side)
    saturated = np.all((depth == max_depth) | (coef == 0))
    assert saturated or room < weight.max()
    assert report["distortion"] == pytest.approx(distortion_of(coef, depth), rel=1e-9)


@SETTINGS
@given(units_problems(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_allocation_is_monotone_in_the_target(problem, a, b):
    coef, weight, max_depth = problem
    top = top_index_bits(coef, weight, max_depth)
    lo, hi = sorted((a * top, b * top))
    d_lo, r_lo = _core.allocate(coef, weight, target_index_bits=lo, max_depth=max_depth)
    d_hi, r_hi = _core.allocate(coef, weight, target_index_bits=hi, max_depth=max_depth)
    assert np.all(d_lo <= d_hi)
    assert r_lo["index_bits"] <= r_hi["index_bits"] and r_lo["distortion"] >= r_hi["distortion"]
    assert r_hi["index_bits"] <= hi * weight.sum()


@SETTINGS
@given(units_problems(), st.floats(0.0, 1.0))
def test_distortion_target_is_met(problem, fraction):
    coef, weight, max_depth = problem
    if coef.sum() == 0:
        return
    floor = distortion_of(coef, np.where(coef > 0, max_depth, 0))
    bound = floor + fraction * (coef.sum() - floor)
    if bound <= 0:
        return
    depth, report = _core.allocate(coef, weight, target_distortion=bound, max_depth=max_depth)
    assert distortion_of(coef, depth) <= bound * (1 + 1e-12)
    assert report["index_bits"] == float(np.dot(weight, depth))


@SETTINGS
@given(units_problems(), st.floats(0.0, 1.0), st.sampled_from(["rd", "nearest"]))
def test_allocate_equals_its_reference_twin(problem, fraction, rounding):
    coef, weight, max_depth = problem
    target = fraction * top_index_bits(coef, weight, max_depth)
    fast, r_fast = _core.allocate(coef, weight, target_index_bits=target, rounding=rounding,
                                  max_depth=max_depth)
    slow, r_slow = _core.allocate_reference(coef, weight, target_index_bits=target,
                                            rounding=rounding, max_depth=max_depth)
    np.testing.assert_array_equal(fast, slow)
    assert r_fast["index_bits"] == r_slow["index_bits"]


@SETTINGS
@given(geometries(), DEPTH_PATTERNS, SEEDS, QUANTIZER_OPTIONS, st.booleans(), MAGNITUDES,
       DISTRIBUTIONS)
def test_torch_quantizer_equals_core(geometry, pattern, seed, options, refine, magnitude,
                                     distribution):
    """The pipeline's vectorised torch quantizer is bit-exact with radio._core.quantize_layer,
    refinement included (so the properties above hold for what radio.quantize stores)."""
    import torch

    from radio import torch_quant

    quantizer, symmetric = options
    n, k, gs = geometry
    rng = np.random.default_rng(seed)
    chunks, units, _ = shape_of(n, k, gs)
    weight = make_weight(rng, n, k, magnitude, distribution)
    row_perm, col_perm = make_perms(rng, n, k, gs)
    depth = make_depth(rng, chunks, units, pattern)
    core = quantize(n, k, gs, weight, row_perm, col_perm, depth, quantizer, symmetric, refine)
    q = torch_quant.quantize_layer(torch.from_numpy(weight), torch.from_numpy(row_perm),
                                   torch.from_numpy(col_perm), torch.from_numpy(depth), gs,
                                   quantizer, refine, symmetric)
    np.testing.assert_array_equal(q.scale.numpy().view(np.uint16), core["scale"])
    # Compared as values: with tied +0/-0 weights the two medians may pick zeros of either sign,
    # which reconstruct identically.
    np.testing.assert_array_equal(q.loc.numpy(), core["loc"].view(np.float16))
    np.testing.assert_array_equal(_core.pack(q.indices.numpy(), depth, gs), core["qweight"])
    np.testing.assert_array_equal(q.w_hat.numpy(), _core.dequantize(core))
