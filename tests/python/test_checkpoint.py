"""Resumable quantization (radio.checkpoint): a run interrupted after round k and resumed from
its checkpoint_dir ends bit-identical to an uninterrupted run; checkpoints of another job and
damaged ones are refused with a clear ValueError (CPU, tiny random Llama, seconds)."""
import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from radio import checkpoint  # noqa: E402
from radio.config import QuantConfig  # noqa: E402
from radio.nn import RadioLinear  # noqa: E402
from radio.quantize import _Session, quantize  # noqa: E402

VOCAB = 128
ROUNDS = 4
BITS = 4.5


class InjectedCrash(RuntimeError):
    pass


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_llama(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=128, hidden_size=64,
                                   intermediate_size=192, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def small_config(**overrides) -> QuantConfig:
    # refine_every=2: the non-final rounds alternate plain and refined quantization, so a resume
    # that got the round index wrong would not reproduce the weights.
    values = dict(rounds=ROUNDS, sequences_per_round=4, seq_len=32, tokens_per_sequence=5,
                  rows_per_group=16, pca_components=16, pca_sequences=8, calib_sequences=8,
                  micro_batch=2, refine_every=2, progress=False)
    values.update(overrides)
    return QuantConfig.cpu(**values)


def calib_tokens(seed=1):
    return torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(seed))


def run(model, directory=None, **kwargs):
    args = dict(bits=BITS, calib=calib_tokens(), config=small_config(), verbose=False)
    args.update(kwargs)
    return quantize(model, checkpoint_dir=directory, **args)


@pytest.fixture(scope="module")
def reference():
    return tiny_llama()


@pytest.fixture(scope="module")
def uninterrupted(reference):
    return run(copy.deepcopy(reference))


def assert_identical(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    assert any(isinstance(m, RadioLinear) for m in b.modules())
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    x = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(a(x).logits, b(x).logits)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a.radio_report.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"}
                     for h in b.radio_report.history]


def crash_on_call(monkeypatch, owner, name, call):
    """Make ``owner.name`` raise InjectedCrash on its ``call``-th call (1-based)."""
    original = getattr(owner, name)
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            raise InjectedCrash(f"injected crash in {name}, call {call}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return count


def count_calls(monkeypatch, owner, name):
    original = getattr(owner, name)
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return count


def saved_rounds(directory: Path) -> int:
    return json.loads((directory / checkpoint.STATE_FILE).read_text())["rounds_done"]


# -- resume gives the uninterrupted result --------------------------------------------------

@pytest.mark.parametrize("method, call, rounds_done", [
    ("backprop", 2 * 2 + 1, 2),  # first micro-batch of round 3 (2 per round)
    ("requantize", ROUNDS, ROUNDS - 1),  # the final round's quantization
    ("plan", 2, 1),  # round 2, after its backward passes
])
def test_resume_after_crash_is_bit_identical(tmp_path, monkeypatch, reference, uninterrupted,
                                             method, call, rounds_done):
    crash_on_call(monkeypatch, _Session, method, call)
    crashed = copy.deepcopy(reference)
    with pytest.raises(InjectedCrash):
        run(crashed, tmp_path)
    # The failed run put the model back.
    assert not any(isinstance(m, RadioLinear) for m in crashed.modules())
    assert saved_rounds(tmp_path) == rounds_done
    assert [p.name for p in tmp_path.glob("round-*.safetensors")] == \
        [f"round-{rounds_done:04d}.safetensors"]
    monkeypatch.undo()

    backprops = count_calls(monkeypatch, _Session, "backprop")
    resumed = run(copy.deepcopy(reference), tmp_path)
    # Only the rounds after the checkpoint ran (2 micro-batches per round).
    assert backprops["n"] == 2 * (ROUNDS - rounds_done)
    assert resumed.radio_report.settings["resumed_after_round"] == rounds_done
    assert_identical(uninterrupted, resumed)


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch, reference,
                                                       uninterrupted):
    """A crash between the new tensor file and the commit of checkpoint.json: the previous
    round's checkpoint stays valid and the resume from it still ends identical."""
    original = checkpoint.fsync_path
    state = {"saves": 0}

    def fsync(path):
        if Path(path).name.startswith(f".{checkpoint.STATE_FILE}"):
            state["saves"] += 1
            if state["saves"] == 2:
                raise InjectedCrash("injected crash before committing round 2")
        original(path)

    monkeypatch.setattr(checkpoint, "fsync_path", fsync)
    with pytest.raises(InjectedCrash):
        run(copy.deepcopy(reference), tmp_path)
    monkeypatch.undo()
    assert saved_rounds(tmp_path) == 1
    resumed = run(copy.deepcopy(reference), tmp_path)
    assert resumed.radio_report.settings["resumed_after_round"] == 1
    assert_identical(uninterrupted, resumed)


_CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {test_dir!r})
    import torch
    torch.set_num_threads(1)
    import test_checkpoint as t
    from radio import checkpoint

    original = checkpoint.save
    def save(directory, job, state):
        path = original(directory, job, state)
        if state.rounds_done == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handlers
        return path
    checkpoint.save = save
    t.run(t.tiny_llama(), {directory!r})
    print("not killed")
""")


def test_sigkill_then_resume_is_bit_identical(tmp_path, reference, uninterrupted):
    """A real crash: a child process killed (SIGKILL) right after its round-2 checkpoint."""
    script = _CHILD.format(test_dir=str(Path(__file__).parent), kill_after=2,
                           directory=str(tmp_path))
    env = dict(os.environ, PYTHONHASHSEED="0")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=600, env=env)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert saved_rounds(tmp_path) == 2
    resumed = run(copy.deepcopy(reference), tmp_path)
    assert resumed.radio_report.settings["resumed_after_round"] == 2
    assert_identical(uninterrupted, resumed)


def test_rerun_after_success_gives_the_same_result(tmp_path, reference, uninterrupted):
    first = run(copy.deepcopy(reference), tmp_path)
    assert saved_rounds(tmp_path) == ROUNDS - 1  # the final round is never saved
    assert "resumed_after_round" not in first.radio_report.settings
    assert "checkpoints" in first.radio_report.seconds
    assert_identical(uninterrupted, first)
    again = run(copy.deepcopy(reference), tmp_path)
    assert_identical(uninterrupted, again)


def test_no_checkpoint_dir_writes_nothing(tmp_path, monkeypatch, reference):
    saves = count_calls(monkeypatch, checkpoint, "save")
    model = run(copy.deepcopy(reference), config=small_config(rounds=2))
    assert saves["n"] == 0
    assert "checkpoints" not in model.radio_report.seconds


# -- refused checkpoints ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_job(tmp_path_factory, reference):
    """A checkpoint directory after 1 completed round (of 2) of the default job."""
    directory = tmp_path_factory.mktemp("job")
    with pytest.MonkeyPatch.context() as mp:
        crash_on_call(mp, _Session, "plan", 2)
        with pytest.raises(InjectedCrash):
            run(copy.deepcopy(reference), directory, config=small_config(rounds=2))
    assert saved_rounds(directory) == 1
    return directory


def fresh_copy(saved_job, tmp_path) -> Path:
    target = tmp_path / "ckpt"
    target.mkdir()
    for f in saved_job.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    return target


@pytest.mark.parametrize("change, message", [
    (dict(bits=5.0), r"target: checkpoint \{'bits': 4.5\}, this run \{'bits': 5.0\}"),
    (dict(config=small_config(rounds=2, seed=3)), r"setting seed: checkpoint 0, this run 3"),
    (dict(calib=calib_tokens(seed=2)), r"calibration differs"),
    (dict(model_seed=1), r"model differs"),
    (dict(config=small_config(rounds=2, micro_batch=4)), r"micro_batch"),
])
def test_other_job_is_refused(tmp_path, saved_job, reference, change, message):
    directory = fresh_copy(saved_job, tmp_path)
    change = dict(change)
    model = tiny_llama(change.pop("model_seed")) if "model_seed" in change else \
        copy.deepcopy(reference)
    change.setdefault("config", small_config(rounds=2))
    with pytest.raises(ValueError, match="different job") as info:
        run(model, directory, **change)
    assert info.match(message)
    assert not any(isinstance(m, RadioLinear) for m in model.modules())


def test_memory_settings_do_not_change_the_job(tmp_path, saved_job, reference):
    directory = fresh_copy(saved_job, tmp_path)
    model = run(copy.deepcopy(reference), directory,
                config=small_config(rounds=2, offload_originals=True, checkpointing=True))
    assert model.radio_report.settings["resumed_after_round"] == 1


def _flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    ("tensor_bit", r"round-0001\.safetensors is damaged \(its SHA-256 differs"),
    ("tensor_missing", r"names round-0001\.safetensors, which is missing"),
    ("json_truncated", r"checkpoint\.json is damaged \(not valid JSON"),
    ("json_field", r"checkpoint\.json is damaged \(field 'seq_counter' missing"),
    ("json_version", r"has version 99; this radio reads version 1"),
    ("json_format", r"is not a radio checkpoint"),
    ("tensor_rewritten", r"'model.layers.0.self_attn.q_proj:g2_sum' .* is missing"),
])
def test_damaged_checkpoint_is_refused(tmp_path, saved_job, reference, damage, message):
    directory = fresh_copy(saved_job, tmp_path)
    state_file = directory / checkpoint.STATE_FILE
    tensors = directory / "round-0001.safetensors"
    record = json.loads(state_file.read_text())
    if damage == "tensor_bit":
        _flip_byte(tensors, tensors.stat().st_size - 100)
    elif damage == "tensor_missing":
        tensors.unlink()
    elif damage == "json_truncated":
        state_file.write_text(state_file.read_text()[:200])
    elif damage == "json_field":
        del record["seq_counter"]
        state_file.write_text(json.dumps(record))
    elif damage == "json_version":
        record["version"] = 99
        state_file.write_text(json.dumps(record))
    elif damage == "json_format":
        state_file.write_text(json.dumps([1, 2, 3]))
    elif damage == "tensor_rewritten":
        # A consistent (hash-matching) file that lacks a tensor: checked by name and shape.
        from safetensors.torch import load_file, save_file

        content = load_file(str(tensors))
        del content["model.layers.0.self_attn.q_proj:g2_sum"]
        save_file(content, str(tensors))
        record["tensor_sha256"] = checkpoint._file_sha256(tensors)
        state_file.write_text(json.dumps(record))
    model = copy.deepcopy(reference)
    with pytest.raises(ValueError, match=message):
        run(model, directory, config=small_config(rounds=2))
    assert not any(isinstance(m, RadioLinear) for m in model.modules())


def test_checkpoint_dir_that_is_a_file(tmp_path, reference):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        run(copy.deepcopy(reference), path, config=small_config(rounds=2))


def test_cli_passes_checkpoint_dir(tmp_path, monkeypatch):
    from radio import cli

    seen = {}

    def fake_quantize(model, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    # The module, not the function radio/__init__.py binds to the same name.
    monkeypatch.setattr(sys.modules["radio.quantize"], "quantize", fake_quantize)
    source = tmp_path / "src"
    tiny_llama().save_pretrained(source)
    code = cli.main(["quantize", str(source), "--bits", "4", "--out", str(tmp_path / "out"),
                     "--quiet", "--checkpoint-dir", str(tmp_path / "ckpt")])
    assert code == 2
    assert seen["checkpoint_dir"] == str(tmp_path / "ckpt")
