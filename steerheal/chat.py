"""Chat formatting that works for templates with and without a system role."""

from __future__ import annotations

_SENTINEL = "\u2063STEERHEAL-SENTINEL\u2063"


def build_messages(user: str, system: str | None) -> list[dict]:
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    return messages


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def supports_system_role(tokenizer) -> bool:
    """True if the template renders a system message and keeps its text.

    Some templates (Gemma-2 style) raise on a system role; others drop it silently.
    """
    try:
        text = _render(tokenizer, build_messages("hi", _SENTINEL), add_generation_prompt=True)
    except Exception:  # jinja raise_exception() surfaces as TemplateError or ValueError
        return False
    return _SENTINEL in text


def chat_prompt(tokenizer, user: str, system: str | None = None) -> str:
    """The prompt text (with special tokens) up to and including the assistant tag.

    The system message is passed explicitly (the bundled SmolLM2 template would otherwise
    insert its own default). If the template has no system role, the system text is
    folded into the user turn.
    """
    if system and not supports_system_role(tokenizer):
        messages = build_messages(f"{system}\n\n{user}", None)
    else:
        messages = build_messages(user, system)
    return _render(tokenizer, messages, add_generation_prompt=True)
