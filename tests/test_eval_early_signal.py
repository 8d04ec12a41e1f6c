"""Early-signal evaluation: the cloze tasks score the answer text (a model trained to prefer the
right answers picks them, with log-likelihoods equal to a direct forward pass), CommonsenseQA
loads the 1,221 validation items of benchmarks/MANIFEST.md, and the `early_signal` group and
its per-task caps resolve from params."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from phi_lib.evaluate.data import load_task
from phi_lib.io import ReadStats
from phi_lib.paths import data_path

pytestmark = pytest.mark.unit
needs_data = pytest.mark.skipif(data_path("benchmarks") is None,
                                reason="no data folder (PHI_DATA)")

DOCS = [  # constructed MMLU items: the right answers are the ones the model is trained on
    {"subject": "astronomy", "question": "What orbits the Earth?",
     "choices": ["a red bicycle", "the Moon", "seven lemons", "a quiet river"], "answer": 1},
    {"subject": "astronomy", "question": "What is the Sun?",
     "choices": ["a star", "a violin", "a wooden chair", "an old tax form"], "answer": 0},
    {"subject": "anatomy", "question": "What pumps blood?",
     "choices": ["the lungs", "a garden hose", "the heart", "a kettle"], "answer": 2},
]


def _byte_tokenizer():
    """A byte-level tokenizer (261 ids): a model small enough to train in a test second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = [("Ġ", x) for x in "ABCD"]  # " A".." D" one token each, as MMLU's letters are
    vocab.update({a + b: len(vocab) + k for k, (a, b) in enumerate(merges)})
    t = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>")


def _direct_loglikelihood(model, tok, ctx: str, cont: str) -> float:
    """Sum log p(continuation tokens | context), one unbatched forward pass (the reference)."""
    c, x = tok.encode(ctx), tok.encode(ctx + cont)[len(tok.encode(ctx)):]
    ids = torch.tensor([c + x])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)  # (T-1, vocab)
    return float(sum(logp[len(c) - 1 + i, t] for i, t in enumerate(x)))


def test_mmlu_cloze_picks_the_answer_a_trained_model_prefers():
    from phi_lib.evaluate.multiple_choice import evaluate_multiple_choice
    from phi_lib.evaluate.prompts import mmlu_cloze
    from transformers import PhiConfig, PhiForCausalLM

    tok = _byte_tokenizer()
    torch.manual_seed(0)  # a tiny Hugging Face Phi, the class stage 06 scores checkpoints with
    model = PhiForCausalLM(PhiConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                     num_hidden_layers=2, num_attention_heads=4))
    items = [mmlu_cloze(d) for d in DOCS]
    assert all(it.continuations == [" " + c for c in d["choices"]] for it, d in zip(items, DOCS))
    assert all("A." not in it.contexts[0] for it in items)  # no letters in cloze form
    texts = [it.contexts[0] + it.continuations[it.gold] for it in items]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = [torch.tensor([tok.encode(t)]) for t in texts]
    model.train()
    for _ in range(25):  # teach it the right answers
        for ids in batch:
            loss = model(ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    metrics, samples = evaluate_multiple_choice(model, tok, "mmlu_cloze", DOCS, batch_size=4,
                                                progress=False)
    assert metrics["n"] == 3 and metrics["acc"] == 1.0 and metrics["acc_norm"] == 1.0
    assert set(metrics["subjects"]) == {"astronomy", "anatomy"}
    for s, it in zip(samples, items):  # the kept log-likelihoods are the model's own
        ref = [_direct_loglikelihood(model, tok, it.contexts[0], c) for c in it.continuations]
        assert s["loglikelihoods"] == pytest.approx(ref, abs=1e-3)
        assert s["pred"] == s["gold"] and s["subject"] == DOCS[s["doc_id"]]["subject"]


@needs_data
def test_commonsense_qa_loader_counts_and_fields():
    from phi_lib.evaluate.prompts import MC_PROMPTS

    stats = ReadStats()
    docs = load_task("commonsense_qa", None, stats)
    # benchmarks/MANIFEST.md: 1,221 records; answers A 239, B 255, C 241, D 251, E 235
    assert len(docs) == 1221 and stats.n_corrupt == 0
    assert Counter(d["answerKey"] for d in docs) == {"A": 239, "B": 255, "C": 241, "D": 251,
                                                     "E": 235}
    first = docs[0]
    assert set(first) == {"id", "question", "question_concept", "choices", "answerKey"}
    assert first["id"] == "1afa02df02c908a558b4036e80242fac"
    assert first["choices"] == {"label": list("ABCDE"), "text": [
        "bank", "library", "department store", "mall", "new york"]}
    assert load_task("commonsense_qa", 3) == docs[:3]
    letters, cloze = MC_PROMPTS["commonsense_qa"](first), MC_PROMPTS["commonsense_qa_cloze"](first)
    assert letters.continuations == [" A", " B", " C", " D", " E"] and "E. new york" in \
        letters.contexts[0]
    assert cloze.continuations[cloze.gold] == " bank" and "A." not in cloze.contexts[0]


def test_early_signal_group_and_caps_resolve():
    from phi_lib.config import ConfigError, TASK_GROUPS, load
    from phi_lib.evaluate.harness import task_fingerprint

    cfg = load(None, {"evaluate.tasks": ["early_signal", "boolq"],
                      "evaluate.task_limits": {"early_signal": 50, "mmlu_cloze": 2}})
    ev = cfg.evaluate
    assert ev.tasks == list(TASK_GROUPS["early_signal"]) + ["boolq"]
    assert {"commonsense_qa_cloze", "mmlu_cloze", "hellaswag"} <= set(ev.tasks)
    assert ev.limit_for("piqa") == 50 and ev.limit_for("mmlu_cloze") == 2
    assert ev.limit_for("boolq") is None
    # a cap is part of its task's fingerprint only
    other = load(None, {"evaluate.tasks": ["early_signal", "boolq"],
                        "evaluate.task_limits": {"early_signal": 50, "mmlu_cloze": 3}}).evaluate
    fp = lambda e, t: task_fingerprint(t, e, "model-x").key
    assert fp(ev, "mmlu_cloze") != fp(other, "mmlu_cloze") and fp(ev, "piqa") == fp(other, "piqa")
    with pytest.raises(ConfigError, match=r"evaluate\.task_limits\.early_signl"):
        load(None, {"evaluate.task_limits": {"early_signl": 5}})


def test_eval_cli_accepts_the_group(tmp_path, monkeypatch):
    """`--tasks early_signal` reaches the harness as the group's tasks."""
    import argparse

    from phi_lib.evaluate import cli, harness

    seen = {}

    def fake(model, tasks, out, **kw):
        seen["tasks"], seen["cfg"] = list(tasks), kw["cfg"]
        return {"results": {}, "skipped": {}}

    monkeypatch.setattr(harness, "evaluate_model", fake)
    p = argparse.ArgumentParser()
    cli.register(p.add_subparsers())
    args = p.parse_args(["eval", "--model", "smollm2", "--tasks", "early_signal", "--out",
                         str(tmp_path), "--set", "evaluate.task_limits.early_signal=20"])
    args.func(args)
    assert "mmlu_cloze" in seen["tasks"] and seen["cfg"].limit_for("winogrande") == 20


def test_mmlu_prefix_cache_gives_the_plain_scores(monkeypatch):
    """Few-shot MMLU on the subject's cached prefix: the same log-likelihoods and greedy flags
    as scoring every context whole (lm-eval's requests), and no request falls back."""
    from transformers import PhiConfig, PhiForCausalLM

    from phi_lib.evaluate import prefix as prefix_mod
    from phi_lib.evaluate.prompts import mmlu, mmlu_prefix
    from phi_lib.scoring import loglikelihood

    tok = _byte_tokenizer()
    torch.manual_seed(1)
    model = PhiForCausalLM(PhiConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=2)).eval()
    shots = {"astronomy": [DOCS[0]], "anatomy": [DOCS[2]]}
    docs = DOCS + [{**DOCS[1], "question": "Is the Sun hot?"}]
    items = [mmlu(d, shots[d["subject"]]) for d in docs]
    req = [(c, x) for it in items for c, x in zip(it.contexts, it.continuations)]
    pre = [mmlu_prefix(d["subject"], shots[d["subject"]]) for d, it in zip(docs, items)
           for _ in it.continuations]
    plain = loglikelihood(model, tok, req, batch_size=3)
    fell_back = []
    monkeypatch.setattr(prefix_mod, "loglikelihood",
                        lambda m, t, r, b: fell_back.extend(r) or loglikelihood(m, t, r, b))
    cached = prefix_mod.loglikelihood_prefixed(model, tok, req, pre, batch_size=3)
    assert [g for _, g in cached] == [g for _, g in plain]
    assert [lp for lp, _ in cached] == pytest.approx([lp for lp, _ in plain], abs=1e-4)
    assert fell_back == []  # every request scored on its subject's cached prefix
    many = [(c, x) for c, x in req[:4]] + [("Q: 2+2?\nA:", " 4 apples")]  # not one token
    monkeypatch.setattr(prefix_mod, "loglikelihood",
                        lambda m, t, r, b: fell_back.extend(r) or loglikelihood(m, t, r, b))
    prefix_mod.loglikelihood_prefixed(model, tok, many, pre[:4] + [""], batch_size=3)
    assert fell_back == many[4:]
