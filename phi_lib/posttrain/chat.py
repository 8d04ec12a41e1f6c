"""Chat templates: the text a conversation becomes, and which of its tokens are the assistant's.

SFT trains on the assistant's tokens only (TRL's `assistant_only_loss`), which needs a template
whose assistant content sits inside `{% generation %}` ... `{% endgeneration %}`. The templates
under `data/templates/` are the training variants of the three formats the workbook uses; each
renders byte for byte as the original (tests/test_posttrain_chat.py checks it against
transformers' `apply_chat_template` with the original tokenizers):

- `phi-3`: `<|user|>\\n...<|end|>\\n<|assistant|>\\n...<|end|>\\n`, the phi-3-mini tokenizer's;
- `chatml`: SmolLM2-Instruct's `<|im_start|>role\\n...<|im_end|>\\n` (with its default system turn);
- `plain`: `User: ...` / `Assistant: ...` lines ending the answer with the EOS token, for tokenizers
  that have no template (the codegen tokenizer of the phi-1.5 models).

The trained span of an assistant turn is its content and the token that ends it (`<|end|>`,
`<|im_end|>`, EOS), so the model learns to stop; role headers and the newline after are not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

TEMPLATES_DIR = Path(__file__).parent / "data" / "templates"
NAMES = ("phi-3", "chatml", "plain")
SPECIAL_TOKENS = {"phi-3": ("<|user|>", "<|assistant|>", "<|end|>", "<|system|>"),
                  "chatml": ("<|im_start|>", "<|im_end|>"), "plain": ()}
"""Tokens a template needs as single tokens of the vocabulary."""

PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
         {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
"""A conversation that tells the templates apart (with and without its system turn)."""


def template(name: str) -> str:
    """The training variant of template `name` (with generation markers)."""
    if name not in NAMES:
        raise KeyError(f"posttrain.chat_template: unknown template {name!r} (known: {', '.join(NAMES)})")
    return (TEMPLATES_DIR / f"{name}.jinja").read_text()


def render(tok, messages: list[dict], name: Optional[str] = None, *,
           add_generation_prompt: bool = False) -> str:
    """`messages` as text, with template `name` (default: the tokenizer's own)."""
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                   chat_template=template(name) if name else None)


def detect(tok) -> str:
    """Which of our templates the tokenizer's own renders as; `plain` when it has none."""
    if not tok.chat_template:
        return "plain"
    for name in NAMES:
        if missing_tokens(tok, name):
            continue
        if all(render(tok, conv, add_generation_prompt=g) == render(tok, conv, name, add_generation_prompt=g)
               for conv in (PROBE, PROBE[1:], PROBE[1:3]) for g in (False, True)):
            return name
    raise ValueError("posttrain.chat_template: the tokenizer's chat template is none of "
                     f"{', '.join(NAMES)} (the ones whose assistant tokens stage 08 can mask); "
                     "name one of them (the model is then trained to that format)")


def missing_tokens(tok, name: str) -> list[str]:
    """Special tokens of template `name` that the tokenizer does not have as one token."""
    vocab = tok.get_vocab()
    return [t for t in SPECIAL_TOKENS[name] if t not in vocab]


def resolve(tok, name: str = "auto") -> str:
    """The template to train with: `name`, or for `auto` the tokenizer's own (checked)."""
    chosen = detect(tok) if name == "auto" else name
    missing = missing_tokens(tok, chosen)
    if missing:
        raise ValueError(f"posttrain.chat_template={chosen}: the tokenizer lacks {', '.join(missing)} "
                         "as single tokens (the phi-3-mini tokenizer has phi-3's, SmolLM2's has "
                         "chatml's); use `plain` or a tokenizer that has them (posttrain.tokenizer)")
    return chosen


def install(tok, name: str) -> None:
    """Make template `name` the tokenizer's own (it is saved with the model and renders as the
    original, so generation and evaluation see the same format)."""
    tok.chat_template = template(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def end_of_turn_id(tok, name: str) -> int:
    """The token that ends an assistant turn (`<|end|>`, `<|im_end|>`, EOS): generation must
    stop there, so it joins the model's `generation_config.eos_token_id`."""
    end = {"phi-3": "<|end|>", "chatml": "<|im_end|>"}.get(name, tok.eos_token)
    return tok.convert_tokens_to_ids(end)
