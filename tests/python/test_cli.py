"""The radio command (python/radio/cli.py): quantize a tiny model directory -> inspect -> eval."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import radio
from radio import cli

TEXT = ("The Congress shall have power to lay and collect taxes, duties, imposts and excises, "
        "to pay the debts and provide for the common defence and general welfare of the United "
        "States. ") * 40


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer trained here (offline), saved as HF files."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("cli")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                                bos_token="<s>", eos_token="<s>")
    cfg = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(root / "tiny")
    fast.save_pretrained(root / "tiny")
    (root / "text.txt").write_text(TEXT.replace(". ", ".\r\n"))
    return root


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_quantize_inspect_eval_round_trip(tiny_dir, capsys):
    out_dir = tiny_dir / "q"
    code, out, err = run(["quantize", tiny_dir / "tiny", "--bits", "3.5", "--out", out_dir,
                          "--calib", tiny_dir / "text.txt", "--rounds", "2", "--seq-len", "64",
                          "--quiet"], capsys)
    assert code == 0, err
    assert "saved" in out and radio.io.is_radio_dir(out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    bpw = config["radio"]["summary"]["bits_per_weight"]
    assert 3.0 < bpw <= 3.5 + 1e-9

    code, out, err = run(["inspect", out_dir, "--json"], capsys)
    assert code == 0, err
    table = json.loads(out)
    assert len(table["layers"]) == 14  # 7 linears x 2 blocks; lm_head stays dense
    assert table["total"]["bits_per_weight"] == pytest.approx(bpw)
    assert sum(r["bytes"] for r in table["layers"]) == table["total"]["bytes"]
    for r in table["layers"]:
        assert sum(r["depth_histogram"]) == r["shape"][0] * r["shape"][1]
    code, out, err = run(["inspect", out_dir], capsys)
    assert code == 0 and out.splitlines()[-1].startswith("total")

    code, out, err = run(["eval", out_dir, "--text", tiny_dir / "text.txt", "--ctx", "64",
                          "--json", "--quiet"], capsys)
    assert code == 0, err
    quantized_ppl = json.loads(out)["perplexity"]
    # the same number through the Python API on the loaded model
    model = radio.load(out_dir)
    tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    assert quantized_ppl == pytest.approx(
        radio.perplexity(model, (tiny_dir / "text.txt").read_text(), ctx=64, tokenizer=tok,
                         progress=False), rel=1e-9)
    code, out, err = run(["eval", tiny_dir / "tiny", "--text", tiny_dir / "text.txt", "--ctx",
                          "64", "--json", "--quiet"], capsys)
    assert code == 0, err
    assert math_isfinite(json.loads(out)["perplexity"])


def math_isfinite(x):
    import math

    return math.isfinite(x)


def test_bad_input_gives_clear_errors(tiny_dir, capsys):
    cases = [
        (["quantize", tiny_dir / "nope", "--bits", "4", "--out", tiny_dir / "o1"], "not found"),
        (["quantize", tiny_dir / "tiny", "--bits", "4", "--out", tiny_dir / "x" / "y" / "z"],
         "parent directory"),
        (["quantize", tiny_dir / "tiny", "--bits", "4", "--out", tiny_dir / "tiny"],
         "not a radio model"),
        (["quantize", tiny_dir / "tiny", "--bits", "4", "--size", "100", "--out",
          tiny_dir / "o2"], "exactly one"),
        (["quantize", tiny_dir / "tiny", "--bits", "4", "--out", tiny_dir / "o3", "--calib",
          "wikitext2"], "never calibrate"),
        (["eval", tiny_dir / "tiny", "--text", tiny_dir / "missing.txt"], "text file not found"),
        (["inspect", tiny_dir / "missing"], "not found"),
        (["inspect", tiny_dir / "tiny"], "not a radio file"),
        (["inspect", tiny_dir / "text.txt"], "safetensors"),
    ]
    for argv, message in cases:
        code, out, err = run(argv, capsys)
        assert code == 2, (argv, out, err)
        assert "radio: error:" in err and message in err, (argv, err)
    assert not any((tiny_dir / name).exists() for name in ("o1", "o2", "o3"))
    for argv in (["quantize", tiny_dir / "tiny", "--bits", "-1", "--out", tiny_dir / "o"],
                 ["quantize", tiny_dir / "tiny", "--bits", "four", "--out", tiny_dir / "o"],
                 ["eval", tiny_dir / "tiny", "--text", "t", "--ctx", "0"]):
        with pytest.raises(SystemExit) as info:
            cli.main([str(a) for a in argv])
        assert info.value.code == 2
        assert "expected a" in capsys.readouterr().err


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "radio.cli", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "quantize" in proc.stdout and "inspect" in proc.stdout
