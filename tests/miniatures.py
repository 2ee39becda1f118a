"""Miniature checkpoints with the real structure of each supported family, small enough to build in seconds.

Each keeps what the export must get right (head_dim, rope kind and factors, partial rotary, grouped KV heads,
tied embeddings, chat format) and shrinks layers, width and vocabulary. Weights are random from a fixed seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB = 2000  # differs from every projection width below (the builder takes any Linear of vocab width for lm_head)
# Llama 3.2 / SmolLM2 / Qwen2.5 shape, shrunk: head_dim 64, 2 query heads per KV head, tied embeddings.
SMALL_GQA_DECODER = {
    "vocab_size": VOCAB,
    "hidden_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}

PHI4_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def save_tokenizer(directory: Path, special: list[str], chat_template: str, bos: str, eos: str) -> dict[str, int]:
    """Train a byte-level BPE of VOCAB tokens on the calibration questions; returns the special token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = (REPO / "calibration" / "gsm8k_train_1024.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["question"] + " " + json.loads(line)["answer"] for line in lines]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=bos, eos_token=eos, pad_token=eos, chat_template=chat_template
    )
    tokenizer.save_pretrained(directory)
    return {token: bpe.token_to_id(token) for token in special}


def make_phi4_mini(directory: Path, *, transformers5_rope_keys: bool = False) -> Path:
    """Phi-4-mini's structure: LongRoPE (short and long factors, 32× context), partial rotary 0.75, head_dim 128,
    3 query heads per KV head, tied embeddings, fused qkv and gate_up. config.json is written the way the published
    Phi-4-mini config is (`rope_scaling` with `type`), or, with `transformers5_rope_keys`, the way transformers 5
    saves it (`rope_parameters` with only `rope_type`)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    ids = save_tokenizer(
        directory,
        ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        PHI4_TEMPLATE,
        bos="<|endoftext|>",
        eos="<|endoftext|>",
    )
    rotary_half = int(128 * 0.75) // 2
    short_factor = [1.0 + 0.02 * i for i in range(rotary_half)]
    long_factor = [1.0 + 1.5 * i for i in range(rotary_half)]
    config = Phi3Config(
        vocab_size=VOCAB,
        hidden_size=768,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=128,
        partial_rotary_factor=0.75,
        max_position_embeddings=2048,
        original_max_position_embeddings=64,
        rope_theta=10000.0,
        rope_scaling={"type": "longrope", "short_factor": short_factor, "long_factor": long_factor},
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(0)
    Phi3ForCausalLM(config).save_pretrained(directory)
    saved = json.loads((directory / "config.json").read_text())
    rope = saved.pop("rope_parameters")
    if transformers5_rope_keys:
        rope.pop("type", None)
        saved["rope_parameters"] = rope
    else:
        saved["rope_scaling"] = {"type": "longrope", "short_factor": short_factor, "long_factor": long_factor}
        saved["rope_theta"] = rope["rope_theta"]
        saved["partial_rotary_factor"] = 0.75
        saved["original_max_position_embeddings"] = 64
    (directory / "config.json").write_text(json.dumps(saved, indent=2))
    return directory


def make_llama_mini(directory: Path) -> Path:
    """Llama 3.2 / SmolLM2 structure: head_dim 64, 2 query heads per KV head, tied embeddings, Llama 3 chat."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = save_tokenizer(
        directory,
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        LLAMA3_TEMPLATE,
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
    )
    config = LlamaConfig(
        **SMALL_GQA_DECODER,
        intermediate_size=640,
        rope_theta=500000.0,
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=ids["<|eot_id|>"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def make_qwen2_mini(directory: Path) -> Path:
    """Qwen2.5 structure: q/k/v biases, head_dim 64, 2 query heads per KV head, tied embeddings, ChatML."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    ids = save_tokenizer(
        directory, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], QWEN_TEMPLATE, bos="<|im_start|>", eos="<|im_end|>"
    )
    config = Qwen2Config(
        **SMALL_GQA_DECODER,
        intermediate_size=704,
        rope_theta=1000000.0,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # random biases, so a dropped q/k/v bias shows in the logits
        for layer in model.model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                projection.bias.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    return directory


MINIATURES: dict[str, Callable[[Path], Path]] = {
    "phi3": make_phi4_mini,
    "llama": make_llama_mini,
    "qwen2": make_qwen2_mini,
}
