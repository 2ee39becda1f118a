"""Chat formats per model family: the prompt layout, the tokens that end a reply, and the reasoning models' think block.

A recipe names its format (`chat.format`). The build uses it to
- write the stop tokens into the package's genai_config.json `eos_token_id` (a checkpoint's config often lists only
  one of them: Llama 3.2's config has `<|eot_id|>` but not `<|eom_id|>`), so generation stops where the model
  means to stop, in onnxruntime-genai and in phiexport's NPU pipeline alike;
- give the package a chat template when the checkpoint has none (GGUF conversions, miniatures). A checkpoint's own
  template is kept: it is the published one, with tool calls and edge cases these compact layouts leave out.
`phiexport run` shows a think block apart from the answer; `phiexport eval` reads the answer after it.

The layouts reproduce the published templates for system/user/assistant turns (see each format's `source`).
"""

from __future__ import annotations

from dataclasses import dataclass

from phiexport.errors import UsageError


@dataclass(frozen=True)
class ChatFormat:
    name: str
    template: str  # Jinja, as in tokenizer_config.json `chat_template`
    special_tokens: tuple[str, ...]  # control tokens the layout uses; each must be one token of the vocabulary
    stop_tokens: tuple[str, ...]  # any of these ends a reply
    think: tuple[str, str] | None = None  # reasoning models: the markers around the thinking, before the answer
    source: str = ""  # the published template this layout follows


def _default_system(opening: str, text: str, closing: str) -> str:
    """The system turn a template adds when the conversation brings none (empty `text`: none added)."""
    if not text:
        return ""
    turn = repr(opening + text + closing)
    return f"{{% if messages[0]['role'] != 'system' %}}{{{{ {turn} }}}}{{% endif %}}"


def _phi_tags(separator: str, default_system: str = "") -> str:
    """`<|role|>content<|end|>` turns (Phi-3.5 puts a newline after each tag and turn; Phi-4-mini does not)."""
    system = _default_system(f"<|system|>{separator}", default_system, f"<|end|>{separator}")
    return (
        system + "{% for message in messages %}{% if message['content'] or message['role'] != 'system' %}"
        f"{{{{ '<|' + message['role'] + '|>{separator}' + message['content'] + '<|end|>{separator}' }}}}"
        "{% endif %}{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ '<|assistant|>{separator}' }}}}"
        "{% else %}{{ eos_token }}{% endif %}"
    )


def _im_sep(default_system: str = "") -> str:
    """Phi-4's `<|im_start|>role<|im_sep|>content<|im_end|>` turns."""
    system = _default_system("<|im_start|>system<|im_sep|>", default_system, "<|im_end|>")
    return (
        system + "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
    )


def _chatml(default_system: str = "") -> str:
    """Qwen's ChatML: `<|im_start|>role\\ncontent<|im_end|>\\n`."""
    system = _default_system("<|im_start|>system\n", default_system, "<|im_end|>\n")
    return (
        system + "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\n"
    "Today Date: 26 Jul 2024\\n\\n' + system + '<|eot_id|>' }}"
    "{% for message in turns %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

PHI4_REASONING_SYSTEM = (
    "You are Phi, a language model trained by Microsoft to help users. Your role as an assistant involves thoroughly "
    "exploring questions through a systematic thinking process before providing the final precise and accurate "
    "solution. This requires engaging in a comprehensive cycle of analysis, summarizing, exploration, reassessment, "
    "reflection, backtracing, and iteration to develop well-considered thinking process. Please structure your "
    "response into two main sections: Thought and Solution using the specified format: <think> {Thought section} "
    "</think> {Solution section}. In the Thought section, detail your reasoning process in steps. Each step should "
    "include detailed considerations such as analysing questions, summarizing relevant findings, brainstorming new "
    "ideas, verifying the accuracy of the current steps, refining any errors, and revisiting previous steps. In the "
    "Solution section, based on various attempts, explorations, and reflections from the Thought section, "
    "systematically present the final solution that you deem correct. The Solution section should be logical, "
    "accurate, and concise and detail necessary steps needed to reach the conclusion. Now, try to solve the following "
    "question through the above guidelines:"
)
PHI4_MINI_REASONING_SYSTEM = "Your name is Phi, an AI math expert developed by Microsoft."
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
THINK = ("<think>", "</think>")
PHI_TAGS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

FORMATS = {
    format.name: format
    for format in (
        ChatFormat(
            "phi3.5",
            _phi_tags("\n"),
            special_tokens=PHI_TAGS,
            stop_tokens=("<|end|>", "<|assistant|>", "<|endoftext|>"),  # as its generation_config.json lists them
            source="microsoft/Phi-3.5-mini-instruct tokenizer_config.json",
        ),
        ChatFormat(
            "phi4-mini",
            _phi_tags(""),
            special_tokens=PHI_TAGS,
            stop_tokens=("<|end|>", "<|endoftext|>"),
            source="microsoft/Phi-4-mini-instruct tokenizer_config.json",
        ),
        ChatFormat(
            "phi4-mini-reasoning",
            _phi_tags("", PHI4_MINI_REASONING_SYSTEM),
            special_tokens=PHI_TAGS,
            stop_tokens=("<|end|>", "<|endoftext|>"),
            think=THINK,
            source="microsoft/Phi-4-mini-reasoning tokenizer_config.json",
        ),
        ChatFormat(
            "phi4",
            _im_sep(),
            special_tokens=("<|im_start|>", "<|im_sep|>", "<|im_end|>"),
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
            source="microsoft/phi-4 tokenizer_config.json",
        ),
        ChatFormat(
            "phi4-reasoning",
            _im_sep(PHI4_REASONING_SYSTEM),
            special_tokens=("<|im_start|>", "<|im_sep|>", "<|im_end|>"),
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
            think=THINK,
            source="microsoft/Phi-4-reasoning tokenizer_config.json",
        ),
        ChatFormat(
            "llama3",
            LLAMA3_TEMPLATE,
            special_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            stop_tokens=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
            source="meta-llama/Llama-3.2-1B-Instruct tokenizer_config.json (tools and date variable left out)",
        ),
        ChatFormat(
            "qwen2.5",
            _chatml(QWEN25_SYSTEM),
            special_tokens=("<|im_start|>", "<|im_end|>"),
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
            source="Qwen/Qwen2.5-0.5B-Instruct tokenizer_config.json (tools left out)",
        ),
        ChatFormat(
            "smollm2",
            _chatml(SMOLLM2_SYSTEM),
            special_tokens=("<|im_start|>", "<|im_end|>"),
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
            source="HuggingFaceTB/SmolLM2-135M-Instruct tokenizer_config.json",
        ),
        ChatFormat(
            "qwen3",
            _chatml(),
            special_tokens=("<|im_start|>", "<|im_end|>"),
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
            think=THINK,
            source="Qwen/Qwen3-0.6B tokenizer_config.json (thinking on; tools left out)",
        ),
    )
}


def chat_format(name: str) -> ChatFormat:
    if name not in FORMATS:
        raise UsageError(f"unknown chat format {name!r}", f"choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def stop_token_ids(format: ChatFormat, vocabulary: dict[str, int]) -> list[int]:
    """The ids of the format's stop tokens; a UsageError when the tokenizer lacks one (a recipe for another model)."""
    missing = [token for token in format.stop_tokens if token not in vocabulary]
    if missing:
        raise UsageError(
            f"chat format {format.name} stops on {', '.join(missing)}, which the tokenizer does not have",
            "use the recipe (or chat.format) of this model's family",
        )
    return [vocabulary[token] for token in format.stop_tokens]
