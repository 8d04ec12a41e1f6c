"""Stage 08 chat templates: our training variants render exactly as the original templates do
(transformers' apply_chat_template with the real tokenizers of the data folder / SmolLM2), and
SFT's labels (built by TRL through our job) mask every token that is not the assistant's."""
import pytest

from phi_lib.paths import data_path
from phi_lib.posttrain import chat
from tests.posttrain_fixtures import CONVERSATION, job, phi3_tokenizer, tiny_model_dir, write_jsonl

pytestmark = pytest.mark.unit

CONVERSATIONS = [
    CONVERSATION,
    CONVERSATION[1:],                                   # no system turn
    CONVERSATION[1:2],                                  # a prompt only
    [{"role": "user", "content": "Hi\nthere"}, {"role": "assistant", "content": "  spaced  "}],
]


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from phi_lib.hf_models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2"))  # the dequantized dir


@pytest.mark.parametrize("conv", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [False, True])
def test_phi3_template_renders_as_the_phi3_tokenizer(conv, gen):
    tok = phi3_tokenizer(template="")  # the tokenizer's own template, from the data folder
    want = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
    assert chat.render(tok, conv, "phi-3", add_generation_prompt=gen) == want
    assert want.startswith("<|system|>\n" if conv[0]["role"] == "system" else "<|user|>\n")


def test_chatml_template_renders_as_smollm2():
    tok = _smollm2_tokenizer()
    for conv in CONVERSATIONS:
        for gen in (False, True):
            assert chat.render(tok, conv, "chatml", add_generation_prompt=gen) == \
                tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
    assert chat.detect(tok) == "chatml"


def test_auto_picks_the_tokenizers_own_format_and_plain_without_one():
    from transformers import AutoTokenizer

    assert chat.detect(phi3_tokenizer(template="")) == "phi-3"
    codegen = AutoTokenizer.from_pretrained(str(data_path("tokenizers/codegen-350M-mono")))
    assert not codegen.chat_template and chat.resolve(codegen, "auto") == "plain"
    text = chat.render(codegen, CONVERSATION[1:3], "plain")
    assert text == "User: What is 2 + 3?\nAssistant: 2 + 3 = 5.<|endoftext|>\n"
    with pytest.raises(ValueError, match=r"chat_template=phi-3: the tokenizer lacks <\|user\|>"):
        chat.resolve(codegen, "phi-3")
    codegen.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="is none of phi-3, chatml, plain"):
        chat.detect(codegen)


def _assistant_spans(text: str, conv: list[dict]) -> list[tuple[int, int]]:
    """Char spans of each answer and its `<|end|>`, found by searching the rendered text
    (independent of the template's generation markers)."""
    spans, pos = [], 0
    for m in conv:
        if m["role"] != "assistant":
            continue
        head = text.index("<|assistant|>\n", pos) + len("<|assistant|>\n")
        assert text.startswith(m["content"] + "<|end|>", head)
        pos = head + len(m["content"]) + len("<|end|>")
        spans.append((head, pos))
    return spans


def test_sft_labels_mask_every_non_assistant_token(tmp_path):
    """TRL's SFT dataset from our job: label = token id exactly on the answers' tokens and
    their <|end|>, -100 on the system, user, role headers, newlines and the final EOS."""
    from phi_lib.posttrain.train import build_trainer

    model = tiny_model_dir(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": CONVERSATION}])
    trainer = build_trainer(job("sft", tmp_path / "sft", model, data))
    row = trainer.train_dataset[0]
    tok = phi3_tokenizer()
    text = tok.apply_chat_template(CONVERSATION, tokenize=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert row["input_ids"] == enc["input_ids"]
    spans = _assistant_spans(text, CONVERSATION)
    # a token is the assistant's when it starts inside an answer span (phi-3's <|end|> is an
    # rstrip token: it absorbs the newline after it, so its offsets run past the span)
    expected = [tid if any(s <= a < e for s, e in spans) else -100
                for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
    for i, (got, want) in enumerate(zip(row["labels"], expected)):
        assert got == want, (i, tok.decode([enc["input_ids"][i]]), got, want)
    trained = tok.decode([t for t in row["labels"] if t != -100])
    assert trained == "2 + 3 = 5.<|end|>5 x 4 = 20, so the answer is 20.<|end|>"


def test_packed_sft_windows_keep_conversations_apart(tmp_path):
    """TRL's packing (best-fit, padding-free): the packed window's labels are each
    conversation's own, and the model sees each conversation alone (block-diagonal attention
    from the position ids), so its logits equal those of the conversation run by itself."""
    import torch

    from phi_lib.posttrain.train import build_trainer

    model = tiny_model_dir(tmp_path / "tiny")
    convs = [CONVERSATION, CONVERSATION[1:3], [{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "hello there"}]]
    data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in convs])
    trainer = build_trainer(job("sft", tmp_path / "sft", model, data, packing=True, max_length=256))
    assert len(trainer.train_dataset) == 1  # the three fit one window
    batch = trainer.data_collator([trainer.train_dataset[0]])
    tok = phi3_tokenizer()
    lm = trainer.model.eval()
    with torch.no_grad():
        packed = lm(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    assert len(starts) == 4
    rendered = [tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False)["input_ids"]
                for c in convs]
    for a, b in zip(starts, starts[1:]):
        ids = batch["input_ids"][0, a:b]
        assert ids.tolist() in rendered  # a whole conversation, not a cut
        with torch.no_grad():
            alone = lm(input_ids=ids[None]).logits[0]
        assert torch.allclose(packed[a:b], alone, atol=1e-5)
