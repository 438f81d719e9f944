"""radio._core allocation and statistics against independent numpy oracles.

The allocation oracle is the definition in include/radio/solver.hpp written in numpy: every
increment (unit u to depth b) has key r_u * 4**(1-b); sorted by key (descending, ties by unit), a
rate target takes the longest prefix within the budget and a distortion target the shortest prefix
within the bound. Brute-force enumeration checks optimality on tiny cases.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from radio import _core


# ---- oracles -----------------------------------------------------------------------------------

def prefix_oracle(coef, weight, max_depth=8, budget=None, distortion=None):
    """Depths of the prefix rule, in numpy (independent of the C++ code)."""
    n = len(coef)
    r = coef / weight
    units = np.repeat(np.arange(n), max_depth)
    depths = np.tile(np.arange(1, max_depth + 1), n)
    keep = coef[units] > 0
    units, depths = units[keep], depths[keep]
    keys = np.ldexp(r[units], -2 * (depths - 1))
    order = np.lexsort((depths, units, -keys))
    units, depths = units[order], depths[order]
    if budget is not None:
        taken = int(np.searchsorted(np.cumsum(weight[units]), budget, side="right"))
    else:
        saving = 3.0 * coef[units] * np.ldexp(1.0, -2 * depths)
        remaining = coef.sum() - np.cumsum(saving)
        within = np.concatenate([[coef.sum() <= distortion], remaining <= distortion])
        taken = int(np.argmax(within))
    out = np.zeros(n, dtype=np.uint8)
    np.maximum.at(out, units[:taken], depths[:taken].astype(np.uint8))
    return out


def model_distortion(coef, depth):
    return math.fsum(coef * np.ldexp(1.0, -2 * depth.astype(np.int64)))


def random_units(rng, n, equal_weights=False, zero_fraction=0.0):
    coef = rng.lognormal(0.0, 3.0, n)
    coef[rng.random(n) < zero_fraction] = 0.0
    weight = np.full(n, 8192.0) if equal_weights else 32.0 * rng.integers(1, 257, n)
    return coef, weight.astype(np.float64)


# ---- allocation --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_allocate_matches_reference_twin_and_numpy_oracle(seed):
    rng = np.random.default_rng(seed)
    max_depth = [8, 4, 3, 8, 1, 6][seed]
    coef, weight = random_units(rng, 3000 + 500 * seed, seed % 2 == 0, 0.05 * (seed % 3))
    side = 0.2 * weight.sum()
    tw = weight.sum()
    positive = weight[coef > 0].sum()
    # Budgets (in index bits) that are not multiples of 32, so rounding cannot move a boundary.
    cases = [
        (dict(target_bits=(side + 0.6137 * max_depth * positive) / tw),
         0.6137 * max_depth * positive),
        (dict(target_index_bits=0.3071 * max_depth * positive / tw), 0.3071 * max_depth * positive),
        (dict(target_bytes=(side + 0.8123 * max_depth * positive) / 8),
         0.8123 * max_depth * positive),
    ]
    for kwargs, budget in cases:
        depth, report = _core.allocate(coef, weight, side_bits=side, max_depth=max_depth, **kwargs)
        ref, ref_report = _core.allocate_reference(coef, weight, side_bits=side,
                                                   max_depth=max_depth, **kwargs)
        np.testing.assert_array_equal(depth, ref)
        np.testing.assert_array_equal(depth, prefix_oracle(coef, weight, max_depth, budget=budget))
        assert report["index_bits"] == ref_report["index_bits"]
        assert report["log2_V"] == pytest.approx(ref_report["log2_V"], rel=1e-12)
    bound = coef.sum() * 4.0 ** (-0.5 * max_depth)
    depth, report = _core.allocate(coef, weight, target_distortion=bound, max_depth=max_depth)
    np.testing.assert_array_equal(depth, prefix_oracle(coef, weight, max_depth, distortion=bound))
    np.testing.assert_array_equal(
        depth, _core.allocate_reference(coef, weight, target_distortion=bound,
                                        max_depth=max_depth)[0])
    assert report["distortion"] <= bound
    assert report["distortion"] == pytest.approx(model_distortion(coef, depth), rel=1e-12)


def test_targets_are_met_from_below_within_one_unit():
    rng = np.random.default_rng(10)
    coef, weight = random_units(rng, 20000, zero_fraction=0.02)
    side, tw = 0.15 * weight.sum(), 0.97 * weight.sum()
    one_unit = weight.max()
    for bits in (0.16, 1.0, 2.37, 3.0, 4.5, 7.99):
        depth, r = _core.allocate(coef, weight, target_bits=bits, side_bits=side, total_weights=tw)
        assert r["bits_per_weight"] <= bits
        assert bits * tw - r["total_bits"] < one_unit
        assert r["index_bits"] == float(np.dot(weight, depth))
        assert r["total_bits"] == r["index_bits"] + side
    for nbytes in (side / 8 + 1e6, side / 8 + 5e7):
        depth, r = _core.allocate(coef, weight, target_bytes=nbytes, side_bits=side)
        assert r["total_bits"] / 8 <= nbytes
        assert 8 * nbytes - r["total_bits"] < one_unit
    for exponent in (0.2, 2.0, 6.0):
        bound = coef.sum() * 4.0 ** -exponent
        depth, r = _core.allocate(coef, weight, target_distortion=bound)
        assert model_distortion(coef, depth) <= bound * (1 + 1e-12)


def test_brute_force_equal_weights_is_exact():
    rng = np.random.default_rng(11)
    for trial in range(25):
        n, max_depth = 1 + trial % 4, 1 + trial % 3
        coef, weight = random_units(rng, n, equal_weights=True)
        if trial % 6 == 0:
            coef[:] = 1.5  # ties
        allocs = np.array(list(itertools.product(range(max_depth + 1), repeat=n)))
        rates = allocs @ weight
        dists = (coef * np.ldexp(1.0, -2 * allocs)).sum(axis=1)
        w = weight[0]
        for steps in range(n * max_depth):
            budget = steps * w + rng.random() * 0.99 * w
            best = dists[rates <= budget].min()
            _, r = _core.allocate(coef, weight, target_index_bits=budget / weight.sum(),
                                  max_depth=max_depth)
            assert r["distortion"] == pytest.approx(best, rel=1e-12)
        for _ in range(5):
            bound = dists.min() + rng.random() * (coef.sum() - dists.min())
            _, r = _core.allocate(coef, weight, target_distortion=bound, max_depth=max_depth)
            assert r["index_bits"] == rates[dists <= bound].min()


def test_brute_force_unequal_weights_nothing_better_at_the_same_rate():
    rng = np.random.default_rng(12)
    for trial in range(30):
        n, max_depth = 2 + trial % 3, 2 + trial % 2
        coef, weight = random_units(rng, n)
        allocs = np.array(list(itertools.product(range(max_depth + 1), repeat=n)))
        rates = allocs @ weight
        dists = (coef * np.ldexp(1.0, -2 * allocs)).sum(axis=1)
        target = rng.random() * max_depth
        _, r = _core.allocate(coef, weight, target_index_bits=target, max_depth=max_depth)
        assert r["index_bits"] <= target * weight.sum()
        assert r["distortion"] == pytest.approx(dists[rates <= r["index_bits"]].min(), rel=1e-12)


def test_monotone_in_target():
    rng = np.random.default_rng(13)
    coef, weight = random_units(rng, 4000, zero_fraction=0.03)
    side = 0.25 * weight.sum()
    previous = np.zeros(len(coef), dtype=np.uint8)
    last_bits, last_dist = -1.0, math.inf
    for bits in np.arange(0.25, 8.0, 0.05):
        depth, r = _core.allocate(coef, weight, target_bits=bits, side_bits=side)
        assert (depth >= previous).all()
        assert r["total_bits"] >= last_bits and r["distortion"] <= last_dist
        previous, last_bits, last_dist = depth, r["total_bits"], r["distortion"]
    last_bits = math.inf
    for exponent in np.arange(7.9, 0.0, -0.1):
        _, r = _core.allocate(coef, weight, target_distortion=coef.sum() * 4.0 ** -exponent)
        assert r["index_bits"] <= last_bits
        last_bits = r["index_bits"]


def test_zero_coefficients_get_zero_bits_and_ends_of_range():
    coef = np.array([0.0, 3.0, 1.0, 0.0, 2.0])
    weight = np.array([64.0, 64.0, 32.0, 32.0, 96.0])
    top = 4 * (64 + 32 + 96) / weight.sum()
    depth, r = _core.allocate(coef, weight, target_index_bits=top, max_depth=4)
    np.testing.assert_array_equal(depth, [0, 4, 4, 0, 4])
    assert r["reachable"] == pytest.approx((0.0, top))
    depth, r = _core.allocate(coef, weight, target_distortion=6.0)
    np.testing.assert_array_equal(depth, 0)


def test_rounding_only_rescales_v():
    rng = np.random.default_rng(14)
    coef, weight = random_units(rng, 2000)
    a, ra = _core.allocate(coef, weight, target_index_bits=3.0, rounding="rd")
    b, rb = _core.allocate(coef, weight, target_index_bits=3.0, rounding="nearest")
    np.testing.assert_array_equal(a, b)
    assert rb["log2_V"] - ra["log2_V"] == pytest.approx(math.log2(4 / 3 * math.log(2)))


def test_report_fields():
    rng = np.random.default_rng(15)
    coef, weight = random_units(rng, 500)
    _, r = _core.allocate(coef, weight, target_bits=3.0, side_bits=1000.0)
    for key in ("log2_V", "iterations", "index_bits", "total_bits", "bits_per_weight",
                "distortion", "reachable", "index_bits_per_weight", "exact_passes", "candidates",
                "greedy_steps", "target", "rounding", "max_depth"):
        assert key in r
    assert r["target"] == ("target_bits", 3.0)
    assert r["bits_per_weight"] == pytest.approx(r["total_bits"] / weight.sum())


def test_unreachable_targets_raise_with_the_range():
    coef, weight = np.array([1.0, 2.0]), np.array([100.0, 100.0])
    kw = dict(side_bits=50.0, total_weights=200.0)
    with pytest.raises(ValueError, match=r"target_bits = 0.2 is not reachable.*\[0.25, 8.25\]"):
        _core.allocate(coef, weight, target_bits=0.2, **kw)
    with pytest.raises(ValueError, match=r"above every unit.*\[0.25, 8.25\]"):
        _core.allocate(coef, weight, target_bits=8.5, **kw)
    with pytest.raises(ValueError, match=r"target_bytes = 6 .*\[6.25, 206.25\]"):
        _core.allocate(coef, weight, target_bytes=6, **kw)
    with pytest.raises(ValueError, match=r"target_distortion.*max_depth 8.*\[4.577636719e-05, 3\]"):
        _core.allocate(coef, weight, target_distortion=1e-6)
    _core.allocate(coef, weight, target_bits=8.25, **kw)  # the top end itself is reachable


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "give exactly one of"),
    (dict(target_bits=3, target_distortion=1.0), r"got 2 \(target_bits, target_distortion\)"),
    (dict(target_bits=True), "target_bits must be a number or None, got True"),
    (dict(target_bits=3, max_depth=9), r"max_depth must be in \[1, 8\], got 9"),
    (dict(target_bits=3, max_depth=0), r"max_depth must be in \[1, 8\], got 0"),
    (dict(target_bits=3, rounding="floor"), 'rounding must be "rd" or "nearest", got "floor"'),
    (dict(target_bits=3, total_weights=0), "total_weights must be finite and > 0, got 0"),
    (dict(target_bits=3, side_bits=-1.0), "side_bits must be finite and >= 0, got -1"),
    (dict(target_bits=math.nan), "target_bits = nan must be finite"),
])
def test_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _core.allocate(np.ones(3), np.full(3, 32.0), **kwargs)


def test_bad_arrays_raise():
    w = np.full(3, 32.0)
    with pytest.raises(ValueError, match="coef must have dtype float64, got float32"):
        _core.allocate(np.ones(3, np.float32), w, target_bits=3)
    with pytest.raises(ValueError, match=r"weight has 2 units, expected 3 \(the length of coef\)"):
        _core.allocate(np.ones(3), w[:2], target_bits=3)
    with pytest.raises(ValueError, match=r"coef must have shape \(\*,\), got \(3, 1\)"):
        _core.allocate(np.ones((3, 1)), w, target_bits=3)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.allocate(np.ones(6)[::2], w, target_bits=3)
    with pytest.raises(ValueError, match=r"coef\[1\] = -1 must be finite and >= 0"):
        _core.allocate(np.array([1.0, -1.0, 1.0]), w, target_bits=3)
    with pytest.raises(ValueError, match=r"coef\[2\] = nan"):
        _core.allocate(np.array([1.0, 1.0, np.nan]), w, target_bits=3)
    with pytest.raises(ValueError, match=r"coef\[0\] = inf"):
        _core.allocate(np.array([np.inf, 1.0, 1.0]), w, target_bits=3)
    with pytest.raises(ValueError, match=r"weight\[1\] = 0 must be finite and > 0"):
        _core.allocate(np.ones(3), np.array([32.0, 0.0, 32.0]), target_bits=3)
    with pytest.raises(ValueError, match="at least one unit"):
        _core.allocate(np.ones(0), np.ones(0), target_bits=3)


def test_allocation_over_packed_layers_counts_the_stored_bytes():
    """Unit weights and side bytes from the Python format mirror; bytes from the spec table."""
    from radio.format import LayerGeometry

    rng = np.random.default_rng(16)
    layers = [(LayerGeometry(700, 96, 256), True), (LayerGeometry(64, 50, 256), False),
              (LayerGeometry(300, 70000, 128), True)]
    weights, side, total = [], 0, 0
    for g, bias in layers:
        for c in range(g.chunks):
            weights += [32.0 * g.rows_in_chunk(c)] * g.units
        side += g.side_bytes(bias)
        total += g.out_features * g.in_features
    weight = np.array(weights)
    coef = rng.lognormal(0, 2, len(weight))
    target = side + 3.1 * total / 8
    depth, r = _core.allocate(coef, weight, target_bytes=target, side_bits=8.0 * side,
                              total_weights=float(total))
    stored, start = 0, 0
    for g, bias in layers:
        d = depth[start:start + g.chunks * g.units].reshape(g.chunks, g.units)
        start += g.chunks * g.units
        words = sum(g.rows_in_chunk(c) * int(d[c].sum()) for c in range(g.chunks))
        idx_k = 2 if g.in_features <= 65535 else 4
        idx_n = 2 if g.out_features <= 65535 else 4
        stored += (4 * words + g.chunks * g.padded_in * (2 + 2 + idx_k) + g.chunks * g.units
                   + g.out_features * idx_n + (2 * g.out_features if bias else 0))
    assert r["total_bits"] == 8 * stored
    assert stored <= target


# ---- statistics --------------------------------------------------------------------------------

def test_group_stats_against_fsum_merge_and_state():
    rng = np.random.default_rng(20)
    n = 23
    single, parts = _core.GroupStats(n), [_core.GroupStats(n) for _ in range(3)]
    batches = []
    for b in range(120):
        sums = rng.lognormal(-8, 3, n) + (1e8 if b == 0 else 0.0)
        count = int(rng.integers(1, 20)) if b % 2 else rng.integers(1, 5, n).astype(np.float64)
        batches.append((sums, count))
        single.add(sums, count)
        parts[b % 3].add(sums, count)
    expected = np.array([
        math.fsum(s[g] for s, _ in batches)
        / math.fsum(float(c) if np.isscalar(c) else c[g] for _, c in batches)
        for g in range(n)])
    np.testing.assert_allclose(single.mean_sq_grad(), expected, rtol=1e-15)
    # All-reduce: the elementwise sum of states is the state of all the data.
    reduced = _core.GroupStats.from_state(sum(p.state() for p in parts))
    np.testing.assert_allclose(reduced.mean_sq_grad(), expected, rtol=1e-15)
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    np.testing.assert_allclose(parts[0].mean_sq_grad(), expected, rtol=1e-15)
    assert single.state().shape == (4, n) and len(single) == n


def test_group_stats_bad_input():
    g = _core.GroupStats(3)
    with pytest.raises(ValueError, match="group 0 has no samples"):
        g.mean_sq_grad()
    with pytest.raises(ValueError, match=r"sum_sq_grad must have shape \(3,\), got \(4,\)"):
        g.add(np.ones(4), 1)
    with pytest.raises(ValueError, match=r"sum_sq_grad\[1\] = nan"):
        g.add(np.array([1.0, np.nan, 1.0]), 1)
    with pytest.raises(ValueError, match="count must be a number"):
        g.add(np.ones(3), "many")
    with pytest.raises(ValueError, match="n_groups must be positive, got 0"):
        _core.GroupStats(0)
    with pytest.raises(ValueError, match="3 groups"):
        _core.GroupStats(4).merge(g)


def test_input_mean_offset_data_and_merge():
    rng = np.random.default_rng(21)
    k = 17
    single, a, b = _core.InputMean(k), _core.InputMean(k), _core.InputMean(k)
    rows = []
    for i in range(40):
        x = (1e4 + rng.normal(0, 1e-3, (1 + i % 7, k))).astype(np.float32)
        rows.append(x)
        single.add(x)
        (a if i % 2 else b).add(x)
    everything = np.concatenate(rows).astype(np.float64)
    expected = np.array([math.fsum(everything[:, j]) for j in range(k)]) / len(everything)
    np.testing.assert_allclose(single.mean(), expected, rtol=1e-15)
    a.merge(b)
    np.testing.assert_allclose(a.mean(), single.mean(), rtol=1e-15)
    assert single.count == len(everything)
    bad = np.zeros((2, k), np.float32)
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"x\[1, 3\] = nan"):
        single.add(bad)
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 17\)"):
        single.add(np.zeros((2, k + 1), np.float32))


@pytest.mark.parametrize("location", ["median", "mean"])
def test_group_spread_against_numpy(location):
    rng = np.random.default_rng(22)
    for n, k, gs in [(300, 40, 256), (17, 5, 4), (64, 33, 64), (5, 3, 100)]:
        w = (0.5 + rng.normal(0, 0.02, (n, k))).astype(np.float32)
        w[:, 1] = 0.25  # a constant column: zero variance in every group
        perm = rng.permutation(n).astype(np.int32)
        loc, s2 = _core.group_spread(w, perm, gs, location=location)
        chunks = -(-n // gs)
        assert loc.shape == s2.shape == (chunks, k)
        for c in range(chunks):
            g = w[perm[c * gs:(c + 1) * gs]].astype(np.float64)
            if location == "median":
                expected = np.sort(g, axis=0)[(len(g) - 1) // 2].astype(np.float32)
            else:
                expected = g.mean(axis=0).astype(np.float32)
            np.testing.assert_array_equal(loc[c], expected)
            np.testing.assert_allclose(s2[c], ((g - loc[c].astype(np.float64)) ** 2).mean(axis=0),
                                       rtol=1e-6)
            assert s2[c, 1] == 0.0 and loc[c, 1] == np.float32(0.25)


def test_group_spread_bad_input():
    w = np.zeros((6, 4), np.float32)
    perm = np.arange(6, dtype=np.int32)
    w[4, 2] = np.inf
    with pytest.raises(ValueError, match=r"weight\[4, 2\] = inf"):
        _core.group_spread(w, perm, 3)
    w[4, 2] = 0
    with pytest.raises(ValueError, match=r"row_perm\[5\] = 0 repeats"):
        _core.group_spread(w, np.array([0, 1, 2, 3, 4, 0], np.int32), 3)
    with pytest.raises(ValueError, match="row_perm must have dtype int32, got int64"):
        _core.group_spread(w, perm.astype(np.int64), 3)
    with pytest.raises(ValueError, match='location must be "median" or "mean", got "mode"'):
        _core.group_spread(w, perm, 3, location="mode")
    with pytest.raises(ValueError, match="rows_per_group must be positive, got 0"):
        _core.group_spread(w, perm, 0)
