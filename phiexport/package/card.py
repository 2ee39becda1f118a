"""The package's README.md: what it is, how accurate it measured, how to run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phiexport.recipe import Recipe
from phiexport.source import Checkpoint
from phiexport.targets import Target


def write_model_card(
    package_dir: Path,
    *,
    recipe: Recipe,
    checkpoint: Checkpoint,
    target: Target,
    report: dict[str, Any],
    weights: dict[str, Any],
) -> None:
    metrics = report["metrics"]
    greedy = report["greedy"]["prompts"]
    divergences = [g["first_divergence"] for g in greedy]
    greedy_line = ", ".join("identical" if d is None else f"token {d}" for d in divergences) or "not run"
    revision = f" @ `{checkpoint.revision}`" if checkpoint.revision else ""
    card = f"""# {recipe.name} — {target.name} package

Built by phiexport from `{checkpoint.origin}`{revision} ({checkpoint.architecture.hf_class}) for
{target.description}. Weights: {weights.get("body") or recipe.quantization.describe()}.

## Accuracy against the fp32 torch reference

Measured at build time on {report["data"]["sequences"]} held-out GSM8K test problems ({metrics["tokens"]} scored
assistant tokens), {target.evaluated_on}.

| metric | value |
| --- | --- |
| perplexity, reference → package | {metrics["ppl_reference"]:.4f} → {metrics["ppl_package"]:.4f} |
| KL(reference ‖ package), mean / p99 | {metrics["kl_mean"]:.5f} / {metrics["kl_p99"]:.5f} |
| top-1 agreement | {metrics["top1_agreement"]:.2%} |
| greedy generation, first differing token | {greedy_line} |

{_gates_line(report.get("gates"))}

`report.json` has every figure; `manifest.json` the sha256 of every file, the recipe and the tool versions.

{_run_section(package_dir.name, weights) if target.static_shapes else _genai_run_section(package_dir.name)}
"""
    (package_dir / "README.md").write_text(card, encoding="utf-8")


def _gates_line(gates: dict[str, Any] | None) -> str:
    if not gates:
        return "No accuracy gates were checked."
    limits = ", ".join(f"{gate} {limit:g}" for gate, limit in gates["limits"].items()) or "none set"
    left = "".join(f"; {gate} is checked by `phiexport eval`" for gate in gates.get("left_to_eval", []))
    if gates["passed"]:
        return f"Accuracy gates passed ({limits}{left})."
    return f"**REJECTED — accuracy gates failed** ({limits}): " + "; ".join(gates["failed"]) + "."


def _genai_run_section(name: str) -> str:
    return f"""## Run it

```python
import onnxruntime_genai as og

model = og.Model("{name}")
tokenizer = og.Tokenizer(model)
prompt = tokenizer.apply_chat_template('[{{"role": "user", "content": "What is 7 * 6?"}}]', add_generation_prompt=True)
params = og.GeneratorParams(model)
params.set_search_options(max_length=256)
generator = og.Generator(model, params)
generator.append_tokens(tokenizer.encode(prompt))
while not generator.is_done():
    generator.generate_next_token()
print(tokenizer.decode(generator.get_sequence(0)))
```

or `phiexport run {name} "What is 7 * 6?"`.
"""


def _run_section(name: str, weights: dict[str, Any]) -> str:
    contexts = weights["contexts"]
    socs = ", ".join(
        f"`{soc}/` ({c['chip']}, soc_model {c['soc_model']}, v{c['htp_arch']})" for soc, c in contexts.items()
    )
    first, context = next(iter(contexts.items()))
    parts = weights["parts"]["layers"]
    layers = ", ".join(f"{first_layer}-{stop - 1}" for first_layer, stop in parts)
    qdq = weights["qdq_bodies"]
    shipped = (
        "their QDQ graphs ship as `body<k>_prefill.onnx` and `body<k>_decode.onnx`"
        if qdq
        else "their QDQ graphs, which the build checked, do not ship (`--qdq-bodies` ships them)"
    )
    runs = []
    if qdq:
        runs.append(f'`phiexport run {name} "What is 7 * 6?" --device cpu` runs the QDQ bodies on the CPU EP.')
    if all("simulator" in part for part in context["parts"]):
        runs.append(
            f"`--device htp-sim` runs the bodies compiled on their own in `{first}/simulator/` on Qualcomm's HTP "
            "simulator, every node on the HTP."
        )
    runs.append(
        "On a Snapdragon device, onnxruntime-genai with the QNN execution provider opens the folder as it is: "
        "`genai_config.json` chains the embeddings, each part's context binaries and the LM head."
    )
    return f"""## What is inside

- `embeddings.onnx` (token embedding {weights["embeddings"]}, rotary tables) and `lm_head.onnx` ({weights["lm_head"]})
  run on the CPU; the transformer body is cut into {len(parts)} part(s) of decoder layers ({layers}), each a
  prefill-chunk and a 1-token decode graph over a fixed KV cache; {shipped}. `npu_pipeline.json` holds their shapes
  and contract.
- Precompiled HTP context binaries, one per part, its prefill and decode sharing one copy of the weights: {socs}.

## Run it

{" ".join(runs)}
"""
