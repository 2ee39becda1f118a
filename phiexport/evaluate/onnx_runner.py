"""Run a genai package's decoder: teacher-forced logits through onnxruntime, greedy text through onnxruntime-genai."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


class PackageRunner:
    """One package's decoder on the onnxruntime CPU execution provider, whichever device it targets.

    The onnxruntime session (logits) and the onnxruntime-genai model (greedy text) each hold the weights: only one
    is open at a time, so a 3.8 B-parameter package costs its 2.3 GB once.
    """

    def __init__(self, package_dir: Path):
        self.package_dir = package_dir
        decoder = json.loads((package_dir / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]
        self._decoder_file = package_dir / decoder["filename"]
        self._kv_shape = (1, decoder["num_key_value_heads"], 0, decoder["head_size"])
        self._session: Any = None
        self._og_model: Any = None

    @property
    def session(self) -> Any:
        import onnxruntime as ort

        if self._session is None:
            self._og_model = None
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.enable_cpu_mem_arena = False  # an arena keeps each run's largest buffers: 0.2 GiB at Phi-4-mini
            model: str | bytes = str(self._decoder_file)
            if (every_position := every_position_logits(self._decoder_file)) is not None:
                model = every_position
                folder = str(self._decoder_file.parent)  # where the graph's external data lies
                options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
            self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return self._session

    def logits(self, token_ids: list[int]) -> np.ndarray:
        """`[len(token_ids), vocab]` float32 logits of one pass from an empty KV cache."""
        ids = np.asarray([token_ids], dtype=np.int64)
        feed: dict[str, np.ndarray] = {}
        for spec in self.session.get_inputs():
            if spec.name == "input_ids":
                feed[spec.name] = ids
            elif spec.name == "attention_mask":
                feed[spec.name] = np.ones_like(ids)
            elif spec.name == "position_ids":
                feed[spec.name] = np.arange(ids.shape[1], dtype=np.int64)[None, :]
            elif spec.name.startswith("past_key_values."):
                feed[spec.name] = np.zeros(self._kv_shape, dtype=_NUMPY_TYPES[spec.type])
            else:
                raise ValueError(f"decoder input {spec.name!r} is not one phiexport knows how to feed")
        (logits,) = self.session.run(["logits"], feed)
        return np.asarray(logits[0], dtype=np.float32)

    def greedy(self, prompt_ids: list[int], new_tokens: int) -> list[int]:
        """Greedy continuation through onnxruntime-genai, as a device would run the package."""
        import onnxruntime_genai as og

        if self._og_model is None:
            self._session = None
            config = og.Config(str(self.package_dir))
            config.clear_providers()  # the CPU EP, whatever device the package targets (DirectML is checked this way)
            self._og_model = og.Model(config)
        params = og.GeneratorParams(self._og_model)
        params.set_search_options(do_sample=False, max_length=len(prompt_ids) + new_tokens)
        generator = og.Generator(self._og_model, params)
        generator.append_tokens(prompt_ids)
        generated: list[int] = []
        while not generator.is_done() and len(generated) < new_tokens:
            generator.generate_next_token()
            generated.append(int(generator.get_next_tokens()[0]))
        return generated


PRUNED_HEAD = "/lm_head/prune/"  # the builder's Gather + Unsqueeze of the last position before the LM head


def every_position_logits(model_path: Path) -> bytes | None:
    """The graph of a package whose LM head sees only the last position (the builder's `prune_lm_head`: the prompt's
    logits are never computed), with the LM head reading every position again, serialized without its external
    data; None for a graph that already returns every position's. The weights and every other node are the
    package's: teacher-forced scoring reads the logits the package computes for its last position, at every one."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    pruned = [node for node in graph.node if node.name.startswith(PRUNED_HEAD)]
    if not pruned:
        return None
    gather = next(node for node in pruned if node.op_type == "Gather")
    last = next(node for node in pruned if node.op_type == "Unsqueeze").output[0]
    for node in graph.node:
        node.input[:] = [gather.input[0] if name == last else name for name in node.input]
    for node in pruned:
        graph.node.remove(node)
    logits = next(output for output in graph.output if output.name == "logits")
    logits.type.tensor_type.shape.dim[1].dim_param = "sequence_length"
    return model.SerializeToString()
