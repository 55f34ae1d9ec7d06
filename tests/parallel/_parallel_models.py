"""The tiny Llama config the sharded-training tests share (a 2-layer, 64-wide Hugging Face Llama)."""

LLAMA = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 100,
}
