"""What onnxruntime-genai 0.18's second chat turn costs on an NPU package: og's turn-2 reply against the oracle
(phiexport's graph runner on the same QDQ graphs, CPU EP) fed the conversation correctly.

    python benchmarks/og_second_turn.py packages/smollm2-135m-instruct/npu

og 0.18 never caches the token turn 1 ended on and runs turn 2's decode steps one slot early, the first overwriting
the last prompt token's keys and values (docs/npu.md; tests/targets/test_npu_build.py pins that behaviour). Prints,
per conversation, og's and the oracle's turn-2 replies, the first position where they differ, and the mean KL of
og's turn-2 decode logits against the correctly fed oracle's on og's own tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime_genai as og
from transformers import AutoTokenizer

from phiexport.evaluate.metrics import first_divergence, score_tokens
from phiexport.export.static_graphs import StaticLayout
from phiexport.runtime.genai import genai_model
from phiexport.runtime.static_pipeline import StaticPipeline

CONVERSATIONS = [
    ("What is the capital of France?", "And the capital of Italy?"),
    ("Give me a word that rhymes with cat.", "Now one that rhymes with dog."),
    ("What is 12 plus 7?", "Multiply that by 3."),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    layout = StaticLayout(**json.loads((args.package / "npu_pipeline.json").read_text())["layout"])
    tokenizer = AutoTokenizer.from_pretrained(args.package)
    eos = set(np.atleast_1d(json.loads((args.package / "genai_config.json").read_text())["model"]["eos_token_id"]))
    oracle = StaticPipeline.from_package(args.package)

    def ids(messages: list[dict[str, str]]) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    print("| turn 2 | og reply | oracle reply (fed correctly) | first difference | KL of og's turn-2 steps |")
    print("| --- | --- | --- | --- | --- |")
    with genai_model(args.package, "cpu") as model:
        for first, second in CONVERSATIONS:
            turn1 = ids([{"role": "user", "content": first}])
            params = og.GeneratorParams(model)
            params.set_search_options(do_sample=False, max_length=layout.context)
            generator = og.Generator(model, params)
            generator.append_tokens(turn1)
            reply1: list[int] = []
            while len(reply1) < args.new_tokens and (not reply1 or reply1[-1] not in eos):
                generator.generate_next_token()
                reply1.append(int(generator.get_next_tokens()[0]))
            history = [
                {"role": "user", "content": first},
                {"role": "assistant", "content": tokenizer.decode(reply1, skip_special_tokens=True)},
            ]
            whole = ids([*history, {"role": "user", "content": second}])
            turn2 = whole[len(turn1) + len(reply1) :]  # what an app appends: the rest of the conversation's template
            generator.append_tokens(turn2)
            og_reply, og_logits = [], []
            while len(og_reply) < args.new_tokens and (not og_reply or og_reply[-1] not in eos):
                og_logits.append(np.array(generator.get_logits()[0, -1], dtype=np.float32))
                generator.generate_next_token()
                og_reply.append(int(generator.get_next_tokens()[0]))
            # the oracle, fed every token once at its own position: turn 1, its reply, turn 2, then og's reply
            oracle.reset()
            oracle.logits(turn1, prompt=True)
            for token in reply1:
                oracle.logits([token])
            forced = [oracle.logits(turn2, prompt=True)[-1]] + [oracle.logits([t])[-1] for t in og_reply[:-1]]
            kl = float(np.mean(score_tokens(np.stack(forced), np.stack(og_logits), np.asarray(og_reply))["kl"]))
            oracle.reset()
            oracle.logits(turn1, prompt=True)
            for token in reply1:
                oracle.logits([token])
            step = oracle.logits(turn2, prompt=True)[-1]
            right: list[int] = []
            while len(right) < args.new_tokens and (not right or right[-1] not in eos):
                right.append(int(np.argmax(step)))
                step = oracle.logits([right[-1]])[-1]
            print(
                f"| {second} | {tokenizer.decode(og_reply, skip_special_tokens=True)!r} | "
                f"{tokenizer.decode(right, skip_special_tokens=True)!r} | "
                f"{first_divergence(right, og_reply)} | {kl:.4f} |"
            )


if __name__ == "__main__":
    main()
