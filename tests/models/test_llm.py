"""Language-model workloads on the meta device against hand counts: a decode step against a KV cache
(GQA, MQA), a generation, mixture-of-experts prefill, sliding-window and padded attention, hardware
FLOPs, and the one-line errors. Tiny Hugging Face configs; skipped without transformers."""

import json

import pytest
import torch
from click.testing import CliRunner
from flopkit.cli import app

from flopkit.flops.llm import count_generation, moe_parameters
from flopkit.flops.mixed import mixed_rows
from flopkit.models import build_model

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'flopkit[hf]')")

from _rotary import rotary_flops, with_rotary  # noqa: E402


def rotary(tokens: int) -> int:
    """The rotary table's matmul FLOPs (``_rotary.rotary_flops``) at head dimension ``D``."""
    return rotary_flops(tokens, D)


C, H, D, I, LAYERS = 64, 4, 16, 128, 2  # hidden, query heads, head dim, MLP width, layers


def llama_args(kv_heads: int, model: str = "llama", **extra) -> list[str]:
    args = {"num_hidden_layers": LAYERS, "hidden_size": C, "num_attention_heads": H,
            "num_key_value_heads": kv_heads, "intermediate_size": I, "vocab_size": 100, **extra}  # fmt: skip
    return ["--model", f"hf:{model}", *[x for k, v in args.items() for x in ("--model-arg", f"{k}={v}")]]


def run_json(*args):
    result = CliRunner().invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def llama_matmul(tokens: int, kv_heads: int) -> int:
    """q and o (C x C), k and v (C x kv*D), gate/up/down (C x I), per layer, on ``tokens`` rows."""
    return LAYERS * 2 * tokens * (2 * C * C + 2 * C * kv_heads * D + 3 * C * I)


def attention(pairs: int, heads: int = H, dk: int = D, dv: int = D) -> int:
    """QK^T and AV on ``pairs`` query-key pairs per head, every layer."""
    return LAYERS * 2 * heads * pairs * (dk + dv)


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["gqa", "mqa"])
def test_decode_step_against_a_kv_cache(kv_heads):
    L, B = 12, 2
    data = run_json("report", *llama_args(kv_heads), "--kv-cache", str(L), "--batch", str(B),
                    "--causal-attention", "exact")  # fmt: skip
    total = data["rows"][0]["breakdown"]
    # the projections see one token per sequence; the rotary table one position
    assert total["matmul"] == llama_matmul(B, kv_heads) + rotary(1)
    assert total["attention"] == attention(B * (L + 1))  # one query against L cached keys and itself
    assert data["kv_cache"] == L and "DynamicCache(12 cached)" in data["inputs"]
    assert data["flops_per_token"] == data["total_flops"] / B


def test_several_new_tokens_align_bottom_right_after_the_cache():
    L, T = 5, 3
    data = run_json("report", *llama_args(2), "--kv-cache", str(L), "--seq-len", str(T),
                    "--causal-attention", "exact")  # fmt: skip
    kept = sum(L + 1 + i for i in range(T))  # new token i sees the cache, earlier new tokens and itself
    assert data["rows"][0]["breakdown"]["attention"] == attention(kept)
    assert data["attention_rules"] == with_rotary({"causal, bottom-right": LAYERS})
    full = run_json("report", *llama_args(2), "--kv-cache", str(L), "--seq-len", str(T))
    assert full["rows"][0]["breakdown"]["attention"] == attention(T * (L + T))


MIXTRAL = ["--model-arg", "num_local_experts=4", "--model-arg", "num_experts_per_tok=2"]


def mixtral_matmul(rows: int, experts: int, top_k: int) -> int:
    """Attention projections (2 KV heads), the router, and gate_up / down of top-k experts per row."""
    attention_proj = 2 * rows * (2 * C * C + 2 * C * 2 * D)
    router = 2 * rows * C * experts
    routed = 2 * (rows * top_k) * C * (2 * I) + 2 * (rows * top_k) * I * C
    return LAYERS * (attention_proj + router + routed)


@pytest.mark.parametrize("rule", ["full", "half", "exact"])
def test_mixtral_prefill_counts_the_routed_experts(rule):
    B, T, E, K = 2, 8, 4, 2
    data = run_json("report", *llama_args(2, "mixtral"), *MIXTRAL, "--seq-len", str(T), "--batch", str(B),
                    "--causal-attention", rule)  # fmt: skip
    total = data["rows"][0]["breakdown"]
    assert total["matmul"] == mixtral_matmul(B * T, E, K) + rotary(T)
    pairs = {"full": T * T, "half": T * T // 2, "exact": T * (T + 1) // 2}[rule]
    assert total["attention"] == attention(B * pairs)
    expert_params = E * (2 * I * C + C * I)
    assert data["total_params"] - data["active_params"] == LAYERS * expert_params * (E - K) // E
    assert data["uncounted_ops"] == {}


def test_mixtral_training_counts_the_expert_backward():
    T = 4
    data = run_json("report", *llama_args(2, "mixtral"), *MIXTRAL, "--seq-len", str(T), "--training")
    # dX and dW of every projection, the experts' grouped matmuls and the router included
    assert data["rows"][0]["backward"]["matmul"] == 2 * mixtral_matmul(T, 4, 2)


def test_moe_parameters_of_a_shared_expert_model_keep_the_shared_expert_active():
    model = build_model("hf:qwen2_moe", {"num_hidden_layers": 1, "hidden_size": C, "num_attention_heads": H,
                                         "num_key_value_heads": 2, "num_experts": 8, "num_experts_per_tok": 2,
                                         "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64,
                                         "vocab_size": 100})  # fmt: skip
    moe = moe_parameters(model)
    routed = 8 * 3 * C * 32  # gate, up, down of every routed expert
    assert [g["path"] for g in moe.groups] == ["layers.0.mlp.experts"] and moe.groups[0]["params"] == routed
    assert moe.total - moe.active == routed * 6 // 8


def test_mistral_sliding_window_keeps_window_keys_per_query():
    T, W = 10, 4
    data = run_json("report", *llama_args(2, "mistral", sliding_window=W), "--seq-len", str(T),
                    "--causal-attention", "exact")  # fmt: skip
    assert data["rows"][0]["breakdown"]["attention"] == attention(sum(min(i + 1, W) for i in range(T)))
    assert data["attention_rules"] == with_rotary({f"causal, bottom-right, sliding window {W}": LAYERS})


def test_padded_batch_counts_only_valid_keys():
    T = 4
    mask = [[1, 1, 1, 1], [0, 0, 1, 1]]  # the second sequence is left-padded by two
    data = run_json("report", *llama_args(2), "--seq-len", str(T), "--batch", "2", "--causal-attention",
                    "exact", "--input", f"attention_mask={json.dumps(mask)}")  # fmt: skip
    kept = T * (T + 1) // 2 + (0 + 0 + 1 + 2)  # padded queries see no valid key at or before them
    assert data["rows"][0]["breakdown"]["attention"] == attention(kept)


def test_generation_sums_every_decode_step():
    """The closed-form sum over linear pieces equals the step-by-step sum, with a sliding window
    whose cache stops growing mid-generation."""
    W, P, N = 6, 3, 9
    model = build_model("hf:mistral", {"num_hidden_layers": 1, "hidden_size": C, "num_attention_heads": H,
                                       "num_key_value_heads": 2, "intermediate_size": I, "vocab_size": 100,
                                       "sliding_window": W})  # fmt: skip
    gen = count_generation(model, P, N, causal="exact")
    per_step = [1 * 2 * H * min(L + 1, W) * 2 * D for L in range(P, P + N)]
    assert gen.decode["attention"] == sum(per_step)
    assert gen.prefill["attention"] == 2 * H * sum(min(i + 1, W) for i in range(P)) * 2 * D
    assert gen.first_step.breakdown["attention"] == per_step[0]
    assert gen.last_step.breakdown["attention"] == per_step[-1]
    assert len(gen.evaluated) < N  # linear pieces summed in closed form
    assert gen.decode["matmul"] == N * gen.first_step.breakdown["matmul"]


def test_generate_report_rows_and_per_token():
    data = run_json("report", *llama_args(2), "--generate", "4:3", "--causal-attention", "exact")
    rows = {r["phase"]: r for r in data["rows"]}
    assert rows["prefill"]["breakdown"]["attention"] == attention(4 * 5 // 2)
    assert rows["decode (3 steps)"]["breakdown"]["attention"] == attention(5 + 6 + 7)
    assert rows["total"]["flops"] == rows["prefill"]["flops"] + rows["decode (3 steps)"]["flops"]
    assert rows["total"]["flops_per_token"] == rows["total"]["flops"] / 7


def test_hardware_flops_add_flash_backward_and_recompute():
    T = 8
    args = [*llama_args(2), "--seq-len", str(T), "--training", "--causal-attention", "exact"]
    plain = run_json("report", *args)
    fwd_attention = attention(T * (T + 1) // 2)
    fwd_matmul = llama_matmul(T, 2)
    assert plain["total_flops"] == plain["rows"][0]["flops"]
    # the rotary table has no backward (positions and inverse frequencies need no gradient)
    assert plain["hardware_flops"] == 3 * fwd_matmul + rotary(T) + 3 * fwd_attention + fwd_attention // 2
    ckpt = run_json("report", *args, "--checkpointing", "blocks")
    assert ckpt["hardware_flops"] == plain["hardware_flops"] + fwd_matmul + fwd_attention
    assert ckpt["total_flops"] == plain["total_flops"]  # model FLOPs do not change


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "hf:bert", "--model-arg", "num_hidden_layers=1", "--kv-cache", "4"], "no KV cache"),
        ([*llama_args(2), "--generate", "0:5"], "at least 1"),
        ([*llama_args(2), "--kv-cache", "4", "--training"], "does not apply with --training"),
        ([*llama_args(2), "--seq-len", "2", "--input", "attention_mask=[[1,1]]"], "--causal-attention exact"),
        ([*llama_args(2), "--seq-len", "2", "--causal-attention", "exact", "--input", "attention_mask=[[1,1,1]]"],
         "[1, 2]"),
        (["--model", "torch.nn:Identity", "--input-shape", "4", "--causal-attention", "exact", "--input",
          "attention_mask=[[1,1]]"], "takes no attention_mask"),
        ([*llama_args(2), "--seq-len", "2", "--checkpointing", "blocks"], "add --training"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(extra, message):
    result = CliRunner().invoke(app, ["report", *extra])
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_python_api_counts_a_decode_step():
    from flopkit.flops.llm import build_kv_cache, cache_argument

    model = build_model("hf:llama", {"num_hidden_layers": 1, "hidden_size": C, "num_attention_heads": H,
                                     "num_key_value_heads": 1, "intermediate_size": I, "vocab_size": 100})  # fmt: skip
    cache = build_kv_cache(model, batch=1, cached_tokens=7)
    ids = torch.empty(1, 1, dtype=torch.int64, device="meta")
    rows, count = mixed_rows(model, ((), {"input_ids": ids, cache_argument(model): cache}), causal="exact")
    assert rows[0].breakdown["attention"] == 2 * H * 8 * 2 * D


def test_eager_attention_layers_are_named_in_the_rules():
    """Attention layers running eager (matmuls + softmax, no SDPA call; Gemma-2's default in recent
    transformers, set here explicitly): no mask rule can apply, and the count says so instead of
    implying the exact count."""
    T = 8
    model = build_model("hf:gemma2", {"num_hidden_layers": LAYERS, "hidden_size": C, "num_attention_heads": H,
                                      "num_key_value_heads": 2, "intermediate_size": I, "vocab_size": 100,
                                      "head_dim": D})  # fmt: skip
    model.config._attn_implementation = "eager"
    ids = torch.empty(1, T, dtype=torch.int64, device="meta")
    rows, count = mixed_rows(model, ((), {"input_ids": ids}), causal="exact")
    assert dict(count.rules) == with_rotary(
        {"attention layer without SDPA (eager matmuls): the pairs it computes": LAYERS}
    )
    assert rows[0].breakdown["attention"] == attention(T * T)


def test_batched_and_looped_experts_count_like_grouped_ones():
    """Hugging Face's batched_mm experts (bmm over gathered weights) and its eager loop over the
    routed experts (run in grouped form: the loop's indexing is data-dependent) against grouped_mm."""
    from flopkit.flops.anymodel import count_model

    model = build_model("hf:mixtral", {"num_hidden_layers": 1, "hidden_size": C, "num_attention_heads": H,
                                       "num_key_value_heads": 2, "intermediate_size": I, "vocab_size": 100,
                                       "num_local_experts": 4, "num_experts_per_tok": 2})  # fmt: skip
    ids = torch.empty(2, 8, dtype=torch.int64, device="meta")
    counts = {}
    for form in ("grouped_mm", "batched_mm", "eager"):
        model.config._experts_implementation = form
        counts[form] = count_model(model, (), {"input_ids": ids}, backward=True)
    grouped, batched, looped = counts["grouped_mm"], counts["batched_mm"], counts["eager"]
    assert batched.forward[""] == grouped.forward[""] and batched.backward[""] == grouped.backward[""]
    assert looped.forward[""] == grouped.forward[""] and model.config._experts_implementation == "eager"
    assert any("eager loop" in rule for rule in looped.rules)
    routed = 2 * (16 * 2) * C * (2 * I) + 2 * (16 * 2) * I * C
    assert batched.forward["layers.0.mlp.experts"]["matmul"] == routed


def test_packed_documents_attend_within_their_own_document():
    """Mask values above 1 are document ids (packed sequences): a query keeps its own document's keys."""
    mask = [[1, 1, 1, 2, 2, 0]]  # two packed documents of 3 and 2 tokens, then one pad
    data = run_json("report", *llama_args(2), "--seq-len", "6", "--causal-attention", "exact",
                    "--input", f"attention_mask={json.dumps(mask)}")  # fmt: skip
    assert data["rows"][0]["breakdown"]["attention"] == attention((1 + 2 + 3) + (1 + 2) + 0)
    assert data["attention_rules"] == with_rotary(
        {"packed documents, causal, top-left (is_causal=True)": LAYERS}
    )


def test_deepseek_style_moe_runs_shared_experts_always_and_routed_at_top_k():
    T, E, K, M = 8, 8, 2, 32  # tokens, routed experts, top-k, expert width (one shared expert of M)
    config = {"num_hidden_layers": 1, "hidden_size": C, "num_attention_heads": H, "vocab_size": 100,
              "n_routed_experts": E, "n_group": 2, "topk_group": 1, "num_experts_per_tok": K,
              "n_shared_experts": 1, "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8,
              "qk_nope_head_dim": 8, "v_head_dim": 16, "moe_intermediate_size": M, "first_k_dense_replace": 0}  # fmt: skip
    args = ["--model", "hf:deepseek_v3", *[x for k, v in config.items() for x in ("--model-arg", f"{k}={v}")]]
    data = run_json("report", *args, "--seq-len", str(T), "--depth", "4", "--causal-attention", "exact")
    rows = {r["path"]: r for r in data["rows"]}
    assert (
        rows["layers.0.mlp.experts"]["breakdown"]["matmul"] == 2 * (T * K) * C * (2 * M) + 2 * (T * K) * M * C
    )
    assert rows["layers.0.mlp.shared_experts"]["breakdown"]["matmul"] == 3 * 2 * T * C * M
    assert rows["layers.0.mlp.gate"]["breakdown"]["matmul"] == 2 * T * C * E
    assert data["total_params"] - data["active_params"] == 3 * C * M * (E - K)
    assert data["uncounted_ops"] == {}


def test_default_mixtral_builds_and_counts_on_the_cpu():
    """The full Mixtral-8x7B configuration on the meta device: parameters by hand."""
    data = run_json("report", "--model", "hf:mixtral", "--seq-len", "4", "--depth", "0")
    C, L, KV, FF, E, V = (
        4096,
        32,
        1024,
        14336,
        8,
        32000,
    )  # hidden, layers, k/v width, expert width, experts, vocab
    per_layer = 2 * C * C + 2 * C * KV + E * 3 * C * FF + E * C + 2 * C  # attention, experts, router, norms
    assert data["total_params"] == V * C + L * per_layer + C
    assert data["active_params"] == data["total_params"] - L * (E - 2) * 3 * C * FF


def test_padded_decode_step_against_a_cache():
    L = 5
    mask = [[1] * (L + 1), [0, 0, 1, 1, 1, 1]]  # the second sequence was left-padded by two
    data = run_json("report", *llama_args(2), "--kv-cache", str(L), "--batch", "2", "--causal-attention",
                    "exact", "--input", f"attention_mask={json.dumps(mask)}")  # fmt: skip
    assert data["rows"][0]["breakdown"]["attention"] == attention((L + 1) + (L + 1 - 2))
