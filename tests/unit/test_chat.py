"""System-role handling: explicit system messages, and folding for templates without one."""

import copy

import pytest

from steerheal.chat import chat_prompt, supports_system_role

# A Gemma-2 style template: no system role, it raises if given one.
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture()
def no_system_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = NO_SYSTEM_TEMPLATE
    return tok


def test_explicit_system_replaces_the_bundled_default(tokenizer):
    text = chat_prompt(tokenizer, "Hello", "You are a pirate.")
    assert "You are a pirate." in text
    assert "SmolLM" not in text  # the template's default system message is not inserted
    assert text.endswith("<|im_start|>assistant\n")


def test_system_folds_into_first_user_turn_without_a_system_role(no_system_tokenizer):
    assert not supports_system_role(no_system_tokenizer)
    text = chat_prompt(no_system_tokenizer, "Hello", "You are a pirate.")
    assert text.count("<start_of_turn>user") == 1
    assert "<start_of_turn>user\nYou are a pirate.\n\nHello<end_of_turn>" in text
    assert text.endswith("<start_of_turn>model\n")
