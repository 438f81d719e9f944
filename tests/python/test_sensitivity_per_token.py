"""The batched per-token estimator (sensitivity.per_token_batched) against its reference twin, one
backward pass per sampled token (sensitivity.per_token_sequential): the same statistics within
float rounding on a tiny random Llama and random data, for several micro-batches, positions,
with and without checkpointing and the logit head; a wrong per-copy reduction and a wrong
truncation are caught (CPU, seconds)."""
import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from radio import sensitivity  # noqa: E402
from radio.config import QuantConfig  # noqa: E402
from radio.quantize import (  # noqa: E402
    _is_causal, _output_function, _Session, find_decoder_blocks, find_target_layers, quantize)
from test_checkpoint import VOCAB, tiny_llama  # noqa: E402  (the same tiny model)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEQ_LEN = 40


def config(**overrides) -> QuantConfig:
    values = dict(rounds=2, sequences_per_round=4, seq_len=SEQ_LEN, tokens_per_sequence=5,
                  rows_per_group=16, pca_components=8, pca_sequences=8, calib_sequences=8,
                  micro_batch=2, progress=False)
    values.update(overrides)
    return QuantConfig.cpu(**values)


def session_for(model: nn.Module, head: bool, checkpointed: int) -> _Session:
    cfg = config(include_lm_head=head)
    session = _Session(model, find_target_layers(model, None, head), cfg, torch.device("cpu"),
                       progress=False)
    blocks = find_decoder_blocks(model)[1]  # found by their linear layers: before install
    session.install(offload=False, has_bias=True)
    session.enable_checkpointing(blocks, checkpointed)
    return session


def statistics(session: _Session, run) -> dict:
    """The statistics ``run()`` adds to zeroed states, in one clock step (one micro-batch)."""
    for s in session.states:
        s.g2_sum.zero_()
        s.row_g2_sum.zero_()
        s.x_sum.zero_()
        s.x_count = 0
        s.collect = True
    session.clock.step += 1
    try:
        with torch.enable_grad():
            run()
    finally:
        for s in session.states:
            s.collect = False
    return {s.name: dict(g2_sum=s.g2_sum.clone(), row_g2_sum=s.row_g2_sum.clone(),
                         x_sum=s.x_sum.clone(), x_count=s.x_count) for s in session.states}


def relative_error(a: dict, b: dict, key: str) -> float:
    num = sum(float((a[n][key].double() - b[n][key].double()).abs().sum()) for n in a)
    den = sum(float(b[n][key].double().abs().sum()) for n in a)
    return num / den


def random_case(batch: int, n_positions: int, seed: int, width: int):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (batch, SEQ_LEN), generator=gen)
    positions = sensitivity.token_positions(SEQ_LEN, n_positions)
    directions = nn.functional.normalize(torch.randn(batch, width, generator=gen), dim=1)
    return tokens, positions, directions


def head_of(session: _Session):
    return session.probes[session.head_name] if session.head_name is not None else None


# -- the pass plan --------------------------------------------------------------------------

@pytest.mark.parametrize("seq_len, count", [(2048, 17), (40, 5), (40, 1), (7, 7), (64, 2)])
@pytest.mark.parametrize("causal", [True, False])
def test_passes_cover_every_position_once(seq_len, count, causal):
    positions = sensitivity.token_positions(seq_len, count)
    passes = sensitivity.per_token_passes(positions, seq_len, causal)
    covered = sorted(i for index, _ in passes for i in index)
    assert covered == list(range(positions.numel()))
    first, length = passes[0]
    assert first == [int(torch.argmax(positions))] and length == seq_len
    for index, length in passes:
        assert len(index) * length <= seq_len  # never more activations than the full pass
        assert all(int(positions[i]) < length for i in index)
        if not causal:
            assert length == seq_len
    if causal and count == 17:  # the paper's 17 positions: about half the full-length work
        work = sum(len(index) * length for index, length in passes)
        assert work < 0.6 * count * seq_len


def test_passes_reject_positions_outside_the_sequence():
    with pytest.raises(ValueError, match="within 0..39"):
        sensitivity.per_token_passes(torch.tensor([3, 40]), 40, True)
    with pytest.raises(ValueError, match="non-empty"):
        sensitivity.per_token_passes(torch.tensor([], dtype=torch.int64), 40, True)


# -- batched == sequential ------------------------------------------------------------------

@pytest.mark.parametrize("batch, n_positions, checkpointed, head", [
    (1, 5, 0, False),
    (3, 5, 0, False),
    (2, 7, 2, False),   # every block recomputed in the backward pass
    (2, 5, 1, True),    # logit head, one block checkpointed
    (3, 1, 0, True),    # only the last token
])
def test_batched_equals_sequential(batch, n_positions, checkpointed, head):
    model = tiny_llama(seed=5)
    session = session_for(model, head, checkpointed)
    try:
        output_fn = _output_function(model)
        width = VOCAB if head else 64
        tokens, positions, directions = random_case(batch, n_positions, seed=batch, width=width)
        args = (output_fn, tokens, directions, positions, head_of(session))
        reference = statistics(session, lambda: sensitivity.per_token_sequential(*args))
        fast = statistics(session, lambda: sensitivity.per_token_batched(*args, causal=True))
        full = statistics(session, lambda: sensitivity.per_token_batched(*args, causal=False))
    finally:
        session.restore()
    for name, ref in reference.items():
        assert float(ref["g2_sum"].sum()) > 0, name
        for result in (fast, full):
            # The input mean counts each sequence's tokens once, as one forward pass does.
            assert result[name]["x_count"] == ref["x_count"], name
            torch.testing.assert_close(result[name]["x_sum"], ref["x_sum"], rtol=1e-9,
                                       atol=1e-9)
            torch.testing.assert_close(result[name]["g2_sum"], ref["g2_sum"], rtol=2e-4,
                                       atol=1e-6 * float(ref["g2_sum"].abs().max()))
            torch.testing.assert_close(result[name]["row_g2_sum"], ref["row_g2_sum"],
                                       rtol=2e-4, atol=1e-6 * float(ref["row_g2_sum"].max()))
    if head:
        assert reference["lm_head"]["x_count"] == batch * n_positions


def test_a_wrong_per_copy_reduction_is_caught(monkeypatch):
    """Squaring the gradient of the batch's sum (no per-copy split) gives other statistics: the
    comparison above can fail."""
    model = tiny_llama(seed=5)
    session = session_for(model, False, 0)
    try:
        tokens, positions, directions = random_case(2, 5, seed=2, width=64)
        args = (_output_function(model), tokens, directions, positions, None)
        reference = statistics(session, lambda: sensitivity.per_token_sequential(*args))
        right = statistics(session, lambda: sensitivity.per_token_batched(*args, causal=True))
        monkeypatch.setattr(sensitivity, "_per_copy_gradients",
                            lambda copies: sensitivity.contextlib.nullcontext())
        wrong = statistics(session, lambda: sensitivity.per_token_batched(*args, causal=True))
    finally:
        session.restore()
    assert relative_error(right, reference, "g2_sum") < 1e-4
    assert relative_error(wrong, reference, "g2_sum") > 0.05


def test_per_copy_chunks_give_the_same_sums():
    """``add_gradient(copies=...)`` formed one copy at a time (the 7B case) or all at once."""
    model = tiny_llama(seed=1)
    session = session_for(model, False, 0)
    try:
        gen = torch.Generator().manual_seed(3)
        state = session.states[0]
        state.row_perm = torch.randperm(state.out_features, generator=gen)  # groups != rows
        grad_out = torch.randn(6, 9, state.out_features, generator=gen)
        x = torch.randn(6, 9, state.in_features, generator=gen)
        sums = []
        for max_elements in (1, 1 << 26):
            state.g2_sum.zero_()
            state.row_g2_sum.zero_()
            state.add_gradient(grad_out, x, copies=6, max_elements=max_elements)
            sums.append((state.g2_sum.clone(), state.row_g2_sum.clone()))
        # The reference: each copy's gradient squared on its own.
        state.g2_sum.zero_()
        state.row_g2_sum.zero_()
        for i in range(6):
            state.add_gradient(grad_out[i], x[i])
        with pytest.raises(ValueError, match="copies"):
            state.add_gradient(grad_out, x, copies=5)  # 6 x 9 rows are not 5 copies
    finally:
        session.restore()
    for g2, row in sums:
        torch.testing.assert_close(g2, state.g2_sum, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(row, state.row_g2_sum, rtol=1e-5, atol=1e-6)


# -- non-causal models ----------------------------------------------------------------------

class TwoLayerToy(nn.Module):
    """An embedding and one up/down pair of linear layers; subclasses mix the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.layers = nn.ModuleList([nn.ModuleList([nn.Linear(32, 48), nn.Linear(48, 32)])])


class Bidirectional(TwoLayerToy):
    """Every output sees every token (a mean over the sequence): truncation would be wrong."""

    def forward(self, tokens):
        h = self.embed(tokens)
        up, down = self.layers[0]
        mixed = h + h.mean(dim=1, keepdim=True)
        return h + down(torch.tanh(up(mixed)))


def test_non_causal_model_runs_full_length_copies():
    torch.manual_seed(0)
    model = Bidirectional()
    assert not _is_causal(model, torch.randint(0, VOCAB, (2, SEQ_LEN)))
    assert _is_causal(_output_function(tiny_llama()), torch.randint(0, VOCAB, (2, SEQ_LEN)))
    cfg = config()
    session = _Session(model, find_target_layers(model), cfg, torch.device("cpu"), False)
    session.install(offload=False, has_bias=True)
    try:
        tokens, positions, directions = random_case(2, 5, seed=4, width=32)
        args = (model, tokens, directions, positions, None)
        reference = statistics(session, lambda: sensitivity.per_token_sequential(*args))
        full = statistics(session, lambda: sensitivity.per_token_batched(*args, causal=False))
        truncated = statistics(session,
                               lambda: sensitivity.per_token_batched(*args, causal=True))
    finally:
        session.restore()
    assert relative_error(full, reference, "g2_sum") < 1e-4
    assert relative_error(truncated, reference, "g2_sum") > 0.01  # why the check exists


class Flattening(TwoLayerToy):
    """Causal (token-wise), but one layer sees the tokens of all sequences as rows of one
    matrix, as a mixture-of-experts expert does: its gradient cannot be split per copy."""

    def forward(self, tokens):
        h = self.embed(tokens)
        up, down = self.layers[0]
        flat = torch.tanh(up(h.cumsum(dim=1).reshape(-1, 32)))
        return h + down(flat.reshape(*h.shape[:2], 48))


def test_layer_without_per_copy_rows_falls_back_to_sequential():
    torch.manual_seed(0)
    model = Flattening()
    session = _Session(model, find_target_layers(model), config(), torch.device("cpu"), False)
    session.install(offload=False, has_bias=True)
    try:
        tokens, positions, directions = random_case(2, 5, seed=6, width=32)
        args = (model, tokens, directions, positions)
        reference = statistics(session, lambda: sensitivity.per_token_sequential(*args))
        with pytest.warns(UserWarning, match="leading dimension"):
            fallback = statistics(session, lambda: sensitivity.backpropagate(
                *args, "per_token", torch.Generator(), causal=True))
    finally:
        session.restore()
    for key in ("g2_sum", "x_sum"):
        assert relative_error(fallback, reference, key) < 1e-6, key
    assert all(fallback[n]["x_count"] == reference[n]["x_count"] for n in reference)


# -- through radio.quantize -----------------------------------------------------------------

def test_quantize_per_token_matches_the_sequential_estimator(monkeypatch):
    """One round of radio.quantize: the fast estimator at micro-batch 2 gives the statistics of
    one backward pass per token (micro-batch 1), so the same layers."""
    calib = torch.randint(0, VOCAB, (8, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    base = tiny_llama(seed=2)
    captured = {}

    def run(micro):
        def plan(session, target, batches):
            captured[micro] = {s.name: s.g2_sum.clone() for s in session.states}
            return original_plan(session, target, batches)

        with monkeypatch.context() as patch:
            patch.setattr(_Session, "plan", plan)
            return quantize(copy.deepcopy(base), bits=4.0, calib=calib, verbose=False,
                            config=config(rounds=1, estimator="per_token", micro_batch=micro))

    original_plan = _Session.plan
    fast = run(2)
    monkeypatch.setattr(sensitivity, "per_token_batched",
                        lambda output_fn, tokens, directions, positions, head=None, causal=False:
                        sensitivity.per_token_sequential(output_fn, tokens, directions,
                                                         positions, head))
    slow = run(1)
    assert fast.radio_report.settings["micro_batch"] == 2
    for name, g2 in captured[1].items():
        assert float(g2.sum()) > 0
        torch.testing.assert_close(captured[2][name], g2, rtol=2e-4,
                                   atol=1e-6 * float(g2.abs().max()))
    mass = [m.radio_report.history[0]["gradient_mass"] for m in (fast, slow)]
    assert mass[0] == pytest.approx(mass[1], rel=1e-4)


def test_per_token_resume_is_bit_identical(tmp_path, monkeypatch):
    """A per_token run interrupted in round 3 and resumed from its checkpoint ends as the
    uninterrupted run (the batched passes depend on nothing but the micro-batch)."""
    from test_checkpoint import InjectedCrash, assert_identical, crash_on_call, run, small_config

    cfg = small_config(estimator="per_token", rounds=3)
    reference = tiny_llama()
    whole = run(copy.deepcopy(reference), config=cfg)
    with monkeypatch.context() as patch:
        crash_on_call(patch, _Session, "backprop", 2 * 2 + 1)  # round 3's first micro-batch
        with pytest.raises(InjectedCrash):
            run(copy.deepcopy(reference), tmp_path, config=cfg)
    resumed = run(copy.deepcopy(reference), tmp_path, config=cfg)
    assert resumed.radio_report.settings["resumed_after_round"] == 2
    assert_identical(whole, resumed)


def test_per_token_streamed_matches_the_plain_run():
    """offload="cpu" (FSDP streaming, every block checkpointed): the batched passes give the
    plain run's bit allocation."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    calib = torch.randint(0, VOCAB, (8, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    cfg = config(estimator="per_token", checkpointing=True)
    runs = [quantize(tiny_llama(seed=2), bits=4.0, calib=calib, config=cfg, verbose=False,
                     **extra) for extra in ({}, {"offload": "cpu"})]
    assert runs[1].radio_report.settings["offload"] == "cpu"
    packed = [{name: m.to_packed().depth for name, m in model.named_modules()
               if hasattr(m, "to_packed")} for model in runs]
    assert packed[0].keys() == packed[1].keys() and len(packed[0]) == 14
    for name, depth in packed[0].items():
        assert torch.equal(depth, packed[1][name]), name


def test_quantize_warns_about_a_non_causal_model():
    torch.manual_seed(0)
    calib = torch.randint(0, VOCAB, (8, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="full length"):
        quantize(Bidirectional(), bits=6.0, calib=calib, verbose=False,
                 config=config(rounds=1, estimator="per_token"))
