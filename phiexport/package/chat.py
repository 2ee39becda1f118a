"""Give a package its family's chat behaviour: every stop token in genai_config.json, a template if it has none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phiexport.chat_formats import ChatFormat, stop_token_ids

TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 keeps a tokenizer's template


def apply_chat_format(package_dir: Path, format: ChatFormat) -> dict[str, Any]:
    """Merge the format's stop ids into `eos_token_id`; write its template when the tokenizer has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package_dir)
    stops = stop_token_ids(format, tokenizer.get_vocab())
    config_path = package_dir / "genai_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    eos = config["model"]["eos_token_id"]
    merged = list(eos) if isinstance(eos, list) else [eos]
    merged += [token for token in stops if token not in merged]
    config["model"]["eos_token_id"] = merged
    config_path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    template = "checkpoint"
    if not tokenizer.chat_template:
        (package_dir / TEMPLATE_FILE).write_text(format.template, encoding="utf-8")
        template = "format"
    return {"format": format.name, "stop_token_ids": merged, "template": template, "think": format.think}
