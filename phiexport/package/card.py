"""The package's README.md: what it is, how accurate it measured, how to run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phiexport.recipe import Recipe
from phiexport.source import Checkpoint
from phiexport.targets import Target


def write_model_card(
    package_dir: Path, *, recipe: Recipe, checkpoint: Checkpoint, target: Target, report: dict[str, Any]
) -> None:
    metrics = report["metrics"]
    greedy = report["greedy"]["prompts"]
    divergences = [g["first_divergence"] for g in greedy]
    greedy_line = ", ".join("identical" if d is None else f"token {d}" for d in divergences) or "not run"
    revision = f" @ `{checkpoint.revision}`" if checkpoint.revision else ""
    card = f"""# {recipe.name} — {target.name} package

Built by phiexport from `{checkpoint.origin}`{revision} ({checkpoint.architecture.hf_class}) for
{target.description}. Weights: {recipe.quantization.describe()}.

## Accuracy against the fp32 torch reference

Measured at build time on {report["data"]["sequences"]} held-out GSM8K test problems ({metrics["tokens"]} scored
assistant tokens), {target.evaluated_on}.

| metric | value |
| --- | --- |
| perplexity, reference → package | {metrics["ppl_reference"]:.4f} → {metrics["ppl_package"]:.4f} |
| KL(reference ‖ package), mean / p99 | {metrics["kl_mean"]:.5f} / {metrics["kl_p99"]:.5f} |
| top-1 agreement | {metrics["top1_agreement"]:.2%} |
| greedy generation, first differing token | {greedy_line} |

`report.json` has every figure; `manifest.json` the sha256 of every file, the recipe and the tool versions.

## Run it

```python
import onnxruntime_genai as og

model = og.Model("{package_dir.name}")
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

or `phiexport run {package_dir.name} "What is 7 * 6?"`.
"""
    (package_dir / "README.md").write_text(card, encoding="utf-8")
