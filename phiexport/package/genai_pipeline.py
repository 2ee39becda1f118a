"""genai_config.json of onnxruntime-genai's `decoder-pipeline` kind for an NPU package: embeddings → each body
part's prefill or decode context binary → LM head, with a sliding window of the prefill chunk."""

from __future__ import annotations

from typing import Any

from phiexport.export.body_parts import BodyPart
from phiexport.export.static_graphs import EMBEDDINGS_INPUTS, STEP_TENSORS, StaticLayout
from phiexport.source.checkpoint import Checkpoint
from phiexport.source.hf_dir import read_json


def special_token_ids(checkpoint: Checkpoint) -> dict[str, Any]:
    """bos, eos (a list when the model has several) and pad ids, generation_config.json first as transformers does."""
    config = checkpoint.config
    generation_path = checkpoint.path / "generation_config.json"
    generation = read_json(generation_path) if generation_path.is_file() else {}
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    bos = generation.get("bos_token_id", config.get("bos_token_id"))
    pad = generation.get("pad_token_id", config.get("pad_token_id"))
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    return {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}


def genai_pipeline_config(
    checkpoint: Checkpoint, layout: StaticLayout, parts: list[BodyPart], context: dict[str, Any]
) -> dict[str, Any]:
    """The config for one SoC's context binaries (`context` as recorded by the NPU build, a record per part)."""
    qnn = {
        "log_id": "onnxruntime-genai",
        "provider_options": [
            {"QNN": {"backend_type": "htp", "htp_performance_mode": "burst", "soc_model": str(context["soc_model"])}}
        ],
    }
    inputs = {
        "input_ids": "input_ids",
        "past_key_names": "past_key.%d",
        "past_value_names": "past_value.%d",
        # og's own position_ids and attention_mask are wrong after left-aligned padding: the embeddings graph derives
        # positions and the mask from these two (docs/npu.md)
        "past_sequence_length": "past_seq_len",
        "total_sequence_length": "total_seq_len",
    }
    bodies = [
        {
            part.stage(kind): {
                "filename": record[kind],
                "session_options": qnn,
                "inputs": part.input_names(layout),
                "outputs": part.output_names(layout),
                # og runs the prefill stages on prompt chunks and the decode stages on generated tokens
                "run_on_token_gen" if kind == "prefill" else "run_on_prompt": False,
            }
        }
        for part, record in zip(parts, context["parts"], strict=True)
        for kind in ("prefill", "decode")
    ]
    return {
        "model": {
            **special_token_ids(checkpoint),
            # og pads a prompt's last chunk with pad_token_id and takes the prompt to end at its first pad id, so the
            # pad must be an id no prompt holds (a chat format's own end-of-turn token did: docs/npu.md): the first id
            # past the vocabulary, which the embeddings graph clamps (pad rows are discarded)
            "pad_token_id": layout.vocab,
            "context_length": layout.context,
            "type": "decoder-pipeline",
            "vocab_size": layout.vocab,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": layout.head_dim,
                "hidden_size": layout.hidden,
                "num_attention_heads": layout.heads,
                "num_hidden_layers": layout.layers,
                "num_key_value_heads": layout.kv_heads,
                "inputs": inputs,
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present_key.%d",
                    "present_value_names": "present_value.%d",
                },
                "sliding_window": {
                    "window_size": layout.chunk,
                    "pad_value": 0,
                    "alignment": "left",
                    "slide_key_value_cache": False,
                },
                "pipeline": [
                    {
                        "embeddings": {
                            "filename": "embeddings.onnx",
                            "inputs": list(EMBEDDINGS_INPUTS),
                            "outputs": ["hidden", *STEP_TENSORS],
                        }
                    },
                    *bodies,
                    {
                        "lm_head": {
                            "filename": "lm_head.onnx",
                            "inputs": ["hidden_out"],
                            "outputs": ["logits"],
                            "is_lm_head": True,
                        }
                    },
                ],
            },
        },
        "search": {
            "do_sample": False,
            "max_length": layout.context,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,  # one buffer per cache tensor, updated in place by the body
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }
