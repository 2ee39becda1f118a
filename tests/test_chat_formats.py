"""Each family's chat layout renders the published prompt; stop tokens must exist in the tokenizer."""

import jinja2
import pytest

from phiexport.chat_formats import FORMATS, PHI4_REASONING_SYSTEM, chat_format, stop_token_ids
from phiexport.errors import UsageError

USER = [{"role": "user", "content": "Q"}]
SYSTEM_USER = [{"role": "system", "content": "S"}, *USER]


def render(name, messages, generation=True):
    template = jinja2.Environment().from_string(chat_format(name).template)
    return template.render(messages=messages, add_generation_prompt=generation, bos_token="<BOS>", eos_token="<EOS>")


@pytest.mark.parametrize(
    ("name", "messages", "expected"),
    [
        ("phi4-mini", SYSTEM_USER, "<|system|>S<|end|><|user|>Q<|end|><|assistant|>"),
        (
            "phi4-mini-reasoning",
            USER,
            "<|system|>Your name is Phi, an AI math expert developed by Microsoft.<|end|><|user|>Q<|end|><|assistant|>",
        ),
        ("phi3.5", SYSTEM_USER, "<|system|>\nS<|end|>\n<|user|>\nQ<|end|>\n<|assistant|>\n"),
        ("phi4", USER, "<|im_start|>user<|im_sep|>Q<|im_end|><|im_start|>assistant<|im_sep|>"),
        (
            "phi4-reasoning",
            USER,
            f"<|im_start|>system<|im_sep|>{PHI4_REASONING_SYSTEM}<|im_end|>"
            "<|im_start|>user<|im_sep|>Q<|im_end|><|im_start|>assistant<|im_sep|>",
        ),
        (
            "llama3",
            USER,
            "<BOS><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        (
            "qwen2.5",
            USER,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            "qwen3",
            SYSTEM_USER,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n",
        ),
    ],
)
def test_formats_render_the_published_layout(name, messages, expected):
    assert render(name, messages) == expected


def test_a_finished_conversation_ends_like_the_published_ones():
    reply = [*USER, {"role": "assistant", "content": "A"}]
    assert render("phi4-mini", reply, generation=False) == "<|user|>Q<|end|><|assistant|>A<|end|><EOS>"
    assert render("qwen3", reply, generation=False).endswith("<|im_start|>assistant\nA<|im_end|>\n")


def test_reasoning_formats_declare_their_think_block():
    thinking = {name for name, fmt in FORMATS.items() if fmt.think}
    assert thinking == {"phi4-mini-reasoning", "phi4-reasoning", "qwen3"}


def test_stop_tokens_missing_from_the_tokenizer_name_the_token():
    fmt = chat_format("llama3")
    assert stop_token_ids(fmt, {"<|eot_id|>": 9, "<|eom_id|>": 8, "<|end_of_text|>": 1}) == [9, 8, 1]
    with pytest.raises(UsageError, match=r"chat format llama3 stops on <\|eom_id\|>, <\|end_of_text\|>"):
        stop_token_ids(fmt, {"<|eot_id|>": 9})


def test_an_unknown_format_lists_the_known_ones():
    with pytest.raises(UsageError, match=r"choose one of phi3\.5, phi4-mini"):
        chat_format("vicuna")


@pytest.mark.parametrize(
    ("text", "thinking", "answer"),
    [
        ("<think>3 * 4 = 12</think>\n\nThe answer is 12.", "3 * 4 = 12", "The answer is 12."),
        ("<think>3 * 4 = ", "3 * 4 =", ""),  # still thinking: no answer yet
        ("The answer is 12.", "", "The answer is 12."),
    ],
)
def test_replies_split_into_thinking_and_answer(text, thinking, answer):
    from phiexport.chat import split_thinking

    assert split_thinking(text, ("<think>", "</think>")) == (thinking, answer)
