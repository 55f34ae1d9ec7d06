"""Hugging Face models by name (``hf:TYPE``), shrunk with --model-arg, counted on the meta device and
checked against hand counts. Skipped when transformers is not installed (CI installs it)."""

import json

import pytest
from click.testing import CliRunner
from flopkit.cli import app

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'flopkit[hf]')")

from _rotary import rotary_flops  # noqa: E402

B, T, C, H, I = 2, 16, 64, 4, 128  # batch, tokens, hidden, heads, MLP width (BERT)
GPT2 = ["--model", "hf:gpt2", "--model-arg", "n_layer=2", "--model-arg", f"n_embd={C}", "--model-arg",
        f"n_head={H}", "--model-arg", "vocab_size=100", "--seq-len", str(T), "--batch", str(B)]  # fmt: skip
BERT = ["--model", "hf:bert", "--model-arg", "num_hidden_layers=2", "--model-arg", f"hidden_size={C}",
        "--model-arg", f"num_attention_heads={H}", "--model-arg", f"intermediate_size={I}",
        "--model-arg", "vocab_size=100", "--seq-len", str(T), "--batch", str(B)]  # fmt: skip


def run_json(*args):
    result = CliRunner().invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_gpt2_report_counts_every_category():
    data = run_json("report", *GPT2)
    total = data["rows"][0]["breakdown"]
    assert total["matmul"] == 2 * (2 * B * T * 12 * C * C)  # c_attn 3C^2, c_proj C^2, MLP 8C^2
    assert total["attention"] == 2 * 4 * B * T * T * C
    assert total["norm"] == 5 * 6 * B * T * C  # ln_1, ln_2 per layer and ln_f: 4 + weight + bias
    # NewGELU's tanh (1 per element of the 4C hidden) and the softmax over T^2 per head (4 per element)
    assert total["elementwise"] == 2 * (B * T * 4 * C + 4 * B * H * T * T)
    assert "2 SDPA call(s) were causal" in " ".join(data["legend"])


def test_gpt2_causal_half_and_exact():
    full = run_json("report", *GPT2)["rows"][0]["breakdown"]["attention"]
    half = run_json("report", *GPT2, "--causal-attention", "half")["rows"][0]["breakdown"]["attention"]
    exact = run_json("report", *GPT2, "--causal-attention", "exact")["rows"][0]["breakdown"]["attention"]
    assert full == 2 * 4 * B * T * T * C and half == 2 * 4 * B * (T * T // 2) * C
    assert exact == 2 * 4 * B * (T * (T + 1) // 2) * C


def test_gpt2_training_measures_the_backward_per_layer():
    data = run_json("report", *GPT2, "--training", "--depth", "2")
    rows = {r["path"]: r for r in data["rows"]}
    block = rows["h.0"]
    assert block["backward"]["matmul"] == 2 * (2 * B * T * 12 * C * C)  # dX and dW for every Linear
    assert block["backward"]["attention"] == 2 * 4 * B * T * T * C
    assert block["forward_flops"] + block["backward_flops"] == block["flops"]
    assert rows[""]["backward_flops"] == sum(rows[p]["backward_flops"] for p in ("h.0", "h.1", "ln_f"))


def test_gpt2_rows_carry_shapes():
    rows = {r["path"]: r for r in run_json("report", *GPT2, "--depth", "4")["rows"]}
    assert rows["h.0.mlp.c_fc"]["input_shapes"] == [[B, T, C]]
    assert rows["h.0.mlp.c_fc"]["output_shapes"] == [[B, T, 4 * C]]
    assert rows["h.0.mlp.c_fc"]["output_bytes"] == B * T * 4 * C * 4
    assert rows["wte"]["input_dtypes"] == ["int64"]


def test_seq_len_sweep_gives_one_row_per_length(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "gpt2.png"
    data = run_json("report", *GPT2[:-4], "--seq-len", "8,16", "--plot", str(plot))
    lens = [r["seq_len"] for r in data["rows"]]
    attention = [r["breakdown"]["attention"] for r in data["rows"]]
    assert lens == [8, 16] and attention == [2 * 4 * 8 * 8 * C, 2 * 4 * 16 * 16 * C]
    assert plot.stat().st_size > 0


def test_bert_report_and_keyword_input():
    total = run_json("report", *BERT)["rows"][0]["breakdown"]
    assert total["matmul"] == 2 * (2 * B * T * (4 * C * C + 2 * C * I)) + 2 * B * C * C  # + pooler
    assert total["attention"] == 2 * 4 * B * T * T * C
    assert total["norm"] == 5 * 6 * B * T * C  # embeddings LN, 2 per layer
    assert total["elementwise"] == 2 * (B * T * I + 4 * B * H * T * T) + B * C  # GELU, softmax, pooler tanh
    typed = run_json("report", *BERT, "--input", f"token_type_ids={B},{T}:int64")
    assert typed["rows"][0]["breakdown"] == total and "token_type_ids=[2, 16] int64" in typed["inputs"]


def test_an_input_the_model_reads_gives_one_line_with_a_hint():
    result = CliRunner().invoke(app, ["report", *BERT, "--input", f"attention_mask={B},{T}:int64"])
    assert result.exit_code == 2 and "meta device" in result.stderr and len(result.stderr.splitlines()) == 1


def test_bert_validate_agrees_with_fvcore_and_flop_counter_mode():
    data = run_json("validate", *BERT)
    assert data["ok"] is True
    assert data["comparable"]["fvcore"] == ["matmul", "attention", "norm"]
    assert data["totals"]["fvcore"]["matmul"] == data["totals"]["analytic"]["matmul"]


def test_llama_hand_written_rms_norm_is_counted():
    args = ["--model", "hf:llama", "--model-arg", "num_hidden_layers=1", "--model-arg", f"hidden_size={C}",
            "--model-arg", f"num_attention_heads={H}", "--model-arg", "num_key_value_heads=2",
            "--model-arg", f"intermediate_size={I}", "--model-arg", "vocab_size=100",
            "--seq-len", str(T), "--batch", str(B)]  # fmt: skip
    total = run_json("report", *args)["rows"][0]["breakdown"]
    assert total["norm"] == 3 * 3 * B * T * C  # input, post-attention and final LlamaRMSNorm
    kv = 2 * C // H  # two key/value heads of C/H
    assert total["matmul"] == 2 * B * T * (2 * C * C + 2 * C * kv + 3 * C * I) + rotary_flops(T, C // H)


def test_unknown_type_and_field_suggest_close_names():
    result = CliRunner().invoke(app, ["report", "--model", "hf:gtp2", "--seq-len", "4"])
    assert result.exit_code == 2 and "did you mean gpt2" in result.stderr
    result = CliRunner().invoke(app, ["report", "--model", "hf:gpt2", "--model-arg", "n_layers=1"])
    assert result.exit_code == 2 and "did you mean n_layer" in result.stderr
    result = CliRunner().invoke(app, ["report", "--model", "hf:gpt2"])
    assert result.exit_code == 2 and "--seq-len" in result.stderr


def test_vision_model_default_input_comes_from_its_config():
    data = run_json("report", "--model", "hf:vit", "--model-arg", "num_hidden_layers=1", "--model-arg",
                    "image_size=32", "--model-arg", "hidden_size=64", "--model-arg", "num_attention_heads=4",
                    "--model-arg", "intermediate_size=128", "--depth", "0")  # fmt: skip
    assert data["inputs"] == "pixel_values=[1, 3, 32, 32] float32"
    T, C = 2 * 2 + 1, 64  # 16-pixel patches of a 32x32 image, and the CLS token
    assert data["rows"][0]["breakdown"]["attention"] == 4 * T * T * C
