"""QuantConfig.round_weighting (radio.round_weighting, issue 5): "normalized" gives every round
the same say in the relative sensitivities, so the allocation does not change when one round's
gradients are 1024x larger; "cumulative" (the paper's mean over sequences) does change. Also:
the scaling itself on hand-made statistics, and a bit-identical resume in "normalized" mode
(CPU, tiny random Llama, seconds)."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from radio import sensitivity  # noqa: E402
from radio.config import QuantConfig  # noqa: E402
from radio.nn import RadioLinear  # noqa: E402
from radio.quantize import _Session, quantize  # noqa: E402
from radio.round_weighting import RoundWeighting, gradient_mass  # noqa: E402
from test_checkpoint import VOCAB, tiny_llama  # noqa: E402  (the same tiny model)

ROUNDS = 4
# Gradients of one round times 32: squared gradients times 1024 (a power of two, so the
# normalized run must reproduce the unscaled one bit for bit, not only approximately).
GRAD_FACTOR = 32.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_config(**overrides) -> QuantConfig:
    values = dict(rounds=ROUNDS, sequences_per_round=4, seq_len=32, tokens_per_sequence=5,
                  rows_per_group=16, pca_components=16, pca_sequences=8, calib_sequences=8,
                  micro_batch=2, progress=False)
    values.update(overrides)
    return QuantConfig.cpu(**values)


def calib_tokens(seed=1):
    return torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(seed))


def depths(model):
    return {name: m.depth.clone() for name, m in model.named_modules()
            if isinstance(m, RadioLinear)}


def run(model, mode, scaled_round=None, monkeypatch=None, bits=4.0, **kwargs):
    """Quantize; with ``scaled_round`` (1-based), that round's weight gradients are multiplied
    by GRAD_FACTOR as the probes square them (2 micro-batches, i.e. backprop calls, per round)."""
    if scaled_round is not None:
        state = {"calls": 0}
        backprop, add_gradient = _Session.backprop, sensitivity.LayerState.add_gradient

        def counting_backprop(self, *args, **kw):
            state["calls"] += 1
            return backprop(self, *args, **kw)

        def scaled_add_gradient(self, grad_out, x):
            if (state["calls"] - 1) // 2 + 1 == scaled_round:
                grad_out = grad_out * GRAD_FACTOR
            return add_gradient(self, grad_out, x)

        monkeypatch.setattr(_Session, "backprop", counting_backprop)
        monkeypatch.setattr(sensitivity.LayerState, "add_gradient", scaled_add_gradient)
    try:
        return quantize(model, bits=bits, calib=calib_tokens(),
                        config=small_config(round_weighting=mode), verbose=False, **kwargs)
    finally:
        if monkeypatch is not None:
            monkeypatch.undo()


@pytest.fixture(scope="module")
def reference():
    return tiny_llama()


def test_normalized_allocation_ignores_one_round_scale(reference, monkeypatch):
    plain = run(copy.deepcopy(reference), "normalized")
    scaled = run(copy.deepcopy(reference), "normalized", scaled_round=2,
                 monkeypatch=monkeypatch)
    masses = [h["gradient_mass"] for h in scaled.radio_report.history]
    plain_masses = [h["gradient_mass"] for h in plain.radio_report.history]
    # The hook did scale round 2 (and only it) ...
    assert masses[1] == pytest.approx(1024 * plain_masses[1], rel=1e-6)
    assert masses[0] == plain_masses[0] and masses[2:] == plain_masses[2:]
    # ... and the normalized result is the same model, bit for bit.
    a, b = depths(plain), depths(scaled)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = plain.state_dict(), scaled.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cumulative_allocation_follows_the_loud_round(reference, monkeypatch):
    """The same 1024x round moves the paper's cumulative allocation (the test above can fail)."""
    plain = run(copy.deepcopy(reference), "cumulative")
    scaled = run(copy.deepcopy(reference), "cumulative", scaled_round=2,
                 monkeypatch=monkeypatch)
    a, b = depths(plain), depths(scaled)
    changed = sum(int((a[k] != b[k]).sum()) for k in a)
    assert changed > 0
    # Round 1 sees no difference in either mode: the modes agree there.
    normalized = run(copy.deepcopy(reference), "normalized")
    h_c, h_n = plain.radio_report.history[0], normalized.radio_report.history[0]
    assert h_c["gradient_mass"] == h_n["gradient_mass"]
    assert h_c["relative_distortion"] == h_n["relative_distortion"]


class _FakeState:
    def __init__(self, g2, row):
        self.g2_sum = g2
        self.row_g2_sum = row


def _round(states, rounds_g2, factor):
    """Add one round's statistics (each layer: [C, K] float32) times ``factor``."""
    for s, g2 in zip(states, rounds_g2):
        s.g2_sum += factor * g2
        s.row_g2_sum += factor * g2.sum(dim=1).to(torch.float64).repeat_interleave(2)


@pytest.mark.parametrize("mode", ["cumulative", "normalized"])
def test_scaling_on_hand_made_statistics(mode):
    gen = torch.Generator().manual_seed(3)
    shapes = [(3, 5), (2, 7)]
    states = [_FakeState(torch.zeros(c, k), torch.zeros(2 * c, dtype=torch.float64))
              for c, k in shapes]
    rounds = [[torch.rand(c, k, generator=gen) for c, k in shapes] for _ in range(3)]
    factors = [1.0, 1000.0, 0.01]  # the quantized model's rounds: louder, then quieter
    weighting = RoundWeighting(mode)
    masses = []
    for r, factor in zip(rounds, factors):
        weighting.begin_round(states)
        _round(states, r, factor)
        masses.append(weighting.end_round(states))
    raw = [factor * sum(float(g.sum()) for g in r) * 2 for r, factor in zip(rounds, factors)]
    assert masses == pytest.approx(raw, rel=1e-5)  # each round's own mass, in both modes
    if mode == "cumulative":
        want = [sum(f * r[i] for r, f in zip(rounds, factors)) for i in range(len(shapes))]
    else:  # every round scaled to round 1's total
        want = [sum(f * r[i] * (raw[0] / m) for r, f, m in zip(rounds, factors, raw))
                for i in range(len(shapes))]
        assert gradient_mass(states) == pytest.approx(3 * raw[0], rel=1e-5)
    for s, w in zip(states, want):
        assert torch.allclose(s.g2_sum, w, rtol=1e-5)


def test_reference_comes_back_from_the_history():
    states = [_FakeState(torch.ones(2, 3), torch.full((4,), 1.5, dtype=torch.float64))]
    weighting = RoundWeighting("normalized", history=[{"round": 1, "gradient_mass": 3.0},
                                                      {"round": 2, "gradient_mass": 50.0}])
    weighting.begin_round(states)
    states[0].g2_sum += 10.0
    states[0].row_g2_sum += 15.0  # this round's mass: 60, scaled to 3
    assert weighting.end_round(states) == 60.0
    assert torch.allclose(states[0].g2_sum, torch.full((2, 3), 1.5))
    assert gradient_mass(states) == pytest.approx(6.0 + 3.0)


def test_bad_mode():
    with pytest.raises(ValueError, match="round_weighting"):
        QuantConfig(round_weighting="ema")
    with pytest.raises(ValueError, match="round_weighting"):
        RoundWeighting("ema")


class _Crash(RuntimeError):
    pass


def test_normalized_resume_is_bit_identical(tmp_path, monkeypatch, reference):
    """The reference mass must survive a checkpoint: crash in round 3's plan, resume."""
    uninterrupted = run(copy.deepcopy(reference), "normalized", checkpoint_dir=tmp_path / "a")
    plan, calls = _Session.plan, {"n": 0}

    def crashing_plan(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Crash("injected")
        return plan(self, *args, **kwargs)

    monkeypatch.setattr(_Session, "plan", crashing_plan)
    with pytest.raises(_Crash):
        quantize(copy.deepcopy(reference), bits=4.0, calib=calib_tokens(),
                 config=small_config(round_weighting="normalized"), verbose=False,
                 checkpoint_dir=tmp_path / "b")
    monkeypatch.undo()
    resumed = run(copy.deepcopy(reference), "normalized", checkpoint_dir=tmp_path / "b")
    assert resumed.radio_report.settings["resumed_after_round"] == 2
    sa, sb = uninterrupted.state_dict(), resumed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    strip = [{k: v for k, v in h.items() if k != "seconds"}
             for h in uninterrupted.radio_report.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"}
                     for h in resumed.radio_report.history]
