"""Miniature checkpoints with the real structure of each supported family, small enough to build in seconds.

Each keeps what the export must get right (head_dim, rope kind and factors, partial rotary, grouped KV heads,
tied embeddings, chat format) and shrinks layers, width and vocabulary. Weights are random from a fixed seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phiexport.recipe import Recipe, StructureConfig

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


def save_tokenizer(
    directory: Path,
    special: list[str],
    chat_template: str,
    bos: str,
    eos: str,
    think: tuple[str, str] | None = None,
) -> dict[str, int]:
    """Train a byte-level BPE of VOCAB tokens on the calibration questions; returns the special token ids.

    `think` markers are added as ordinary tokens, as the reasoning models have them (decoding keeps them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = (REPO / "calibration" / "gsm8k_train_1024.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["question"] + " " + json.loads(line)["answer"] for line in lines]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(think or ()),
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    if think:
        from tokenizers import AddedToken

        bpe.add_tokens([AddedToken(marker, special=False, normalized=False) for marker in think])
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


def make_qwen3_mini(directory: Path) -> Path:
    """Qwen3 structure (q/k norms, attention wider than the hidden size, thinking chat), from its recipe."""
    from phiexport.recipe import load_recipe

    return make_recipe_miniature(load_recipe("qwen3-0.6b"), directory)


MINIATURES: dict[str, Callable[[Path], Path]] = {
    "phi3": make_phi4_mini,
    "llama": make_llama_mini,
    "qwen2": make_qwen2_mini,
    "qwen3": make_qwen3_mini,
}


# --- miniatures generated from a recipe's recorded structure -------------------------------------------------------

MINI_LAYERS = 2
MINI_KV_HEADS = 2
MINI_HEADS = 8
MINI_LONGROPE_CONTEXT = 64  # original context of a LongRoPE miniature, so tests reach the long factors quickly
MINI_CONTEXT = 4096


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def miniature_config(structure: StructureConfig, ids: dict[str, int], bos: str, eos: str) -> dict[str, Any]:
    """A published-style config.json for a miniature of `structure`: 2 layers, at most 2 KV heads and 8 query heads
    with the real number of query heads per KV head; the real head_dim, rope (kind, theta, factors, partial rotary),
    tying and biases; width, MLP and context scaled down in the real proportions; the VOCAB-token vocabulary."""
    return checkpoint_config(structure, ids, bos, eos, miniature=True)


def checkpoint_config(
    structure: StructureConfig, ids: dict[str, int], bos: str, eos: str, *, miniature: bool
) -> dict[str, Any]:
    """config.json as the model's authors publish it: at full size, or shrunk (see miniature_config)."""
    from phiexport.architectures import ARCHITECTURES

    model_type = next(a.model_type for a in ARCHITECTURES.values() if a.hf_class == structure.architecture)
    rope = structure.rope
    if miniature:
        group = structure.attention_heads // structure.kv_heads
        kv = max(1, min(structure.kv_heads, MINI_KV_HEADS, MINI_HEADS // group))  # Qwen2.5's 7 per group: one KV head
        heads = kv * group
        width = structure.hidden_size / (structure.attention_heads * structure.head_dim)
        hidden = _round_to(heads * structure.head_dim * width, 64)
        intermediate = _round_to(hidden * structure.intermediate_size / structure.hidden_size, 64)
        layers, vocab = MINI_LAYERS, VOCAB
        # llama3 keeps its original context (8192), which transformers wants below the maximum
        context = min(structure.context_length, max(MINI_CONTEXT, 2 * (rope.original_context or 0)))
        longrope_context = MINI_LONGROPE_CONTEXT
    else:
        heads, kv, hidden, intermediate = (
            structure.attention_heads,
            structure.kv_heads,
            structure.hidden_size,
            structure.intermediate_size,
        )
        layers, vocab, context = structure.layers, structure.vocab_size, structure.context_length
        longrope_context = rope.original_context or 0
    config: dict[str, Any] = {
        "architectures": [structure.architecture],
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": structure.head_dim,
        "max_position_embeddings": context,
        "tie_word_embeddings": structure.tied_embeddings,
        "rope_theta": rope.theta,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "bos_token_id": ids[bos],
        "eos_token_id": ids[eos],
        "pad_token_id": ids[eos],
        "torch_dtype": "float32",
    }
    if structure.attention_bias and model_type != "qwen2":
        config["attention_bias"] = True
    if rope.partial_rotary != 1.0:
        config["partial_rotary_factor"] = rope.partial_rotary
    if rope.type == "longrope":
        assert rope.original_context is not None
        ratio = structure.context_length // rope.original_context
        config["original_max_position_embeddings"] = longrope_context
        config["max_position_embeddings"] = longrope_context * ratio
        config["rope_scaling"] = {
            "type": "longrope",
            "short_factor": list(rope.short_factor or ()),
            "long_factor": list(rope.long_factor or ()),
        }
    elif model_type == "phi3":  # Phi-4 publishes it equal to its context; the builder reads a larger one as LongRoPE
        config["original_max_position_embeddings"] = context
    elif rope.type == "llama3":
        config["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": rope.factor,
            "low_freq_factor": rope.low_freq_factor,
            "high_freq_factor": rope.high_freq_factor,
            "original_max_position_embeddings": rope.original_context,
        }
    return config


def save_recipe_tokenizer(recipe: Recipe, directory: Path) -> tuple[dict[str, int], str, str]:
    """A VOCAB-token tokenizer with the special tokens and chat template of `recipe`'s chat format: (ids, bos, eos)."""
    from phiexport.chat_formats import chat_format

    assert recipe.chat.format is not None, f"{recipe.name}: no chat format"
    fmt = chat_format(recipe.chat.format)
    special = list(dict.fromkeys([*fmt.special_tokens, *fmt.stop_tokens]))
    bos = next((t for t in ("<|begin_of_text|>", "<|endoftext|>") if t in special), special[0])
    ids = save_tokenizer(directory, special, fmt.template, bos=bos, eos=fmt.stop_tokens[0], think=fmt.think)
    return ids, bos, fmt.stop_tokens[0]


def make_recipe_miniature(recipe: Recipe, directory: Path) -> Path:
    """A random-weight checkpoint with the structure and chat format of `recipe` (which must record both)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    assert recipe.structure is not None, f"{recipe.name}: no structure"
    published = miniature_config(recipe.structure, *save_recipe_tokenizer(recipe, directory))
    (directory / "config.json").write_text(json.dumps(published, indent=2))
    config = AutoConfig.from_pretrained(directory)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random biases and q/k norm weights, so an export that drops them shows in the logits
        for layer in model.model.layers:
            attention = layer.self_attn
            if recipe.structure.attention_bias:
                for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                    projection.bias.normal_(0.0, 0.5)
            if recipe.structure.qk_norm:
                attention.q_norm.weight.uniform_(0.5, 2.0)
                attention.k_norm.weight.uniform_(0.5, 2.0)
    model.save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps(published, indent=2))  # as published, not as transformers saves
    return directory


# What the suite shortens when it builds a recipe on its miniature: how much text is scored and calibrated, never the
# recipe's structure, quantization or targets. The NPU cache is capped by the miniature's own context.
QUICK_CHECK = {
    "evaluation": {"sequences": 4, "greedy_prompts": 1, "greedy_tokens": 8},
    "calibration": {"sequences": 8},
    "npu": {"activation_sequences": 4, "simulator_decode_tokens": 1},
    "gates": {"max_kl": 1.0, "min_top1": None, "max_ppl_ratio": 2.0},
}


def on_miniature(recipe: Recipe, model_dir: Path, *, quick: bool, **overrides: Any) -> Recipe:
    """`recipe` pointed at its miniature in `model_dir`, its NPU cache within the miniature's context."""
    context = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    changes: dict[str, Any] = {"source": {"model": str(model_dir), "revision": None}}
    if recipe.npu.context_length > context:
        changes["npu"] = {"context_length": context // recipe.npu.chunk * recipe.npu.chunk}
    for update in (QUICK_CHECK if quick else {}, overrides):
        for key, value in update.items():
            changes[key] = {**changes.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe.with_overrides(changes)
