"""DPO through our job and TRL's DPOTrainer on a tiny model, checked against the DPO paper's
formula computed here from the models' own log-probabilities."""
import pytest
import torch
import torch.nn.functional as F

from tests.posttrain_fixtures import PAIRS, job, phi3_tokenizer, tiny_model_dir, write_jsonl

pytestmark = pytest.mark.unit


def completion_logp(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """Sum of log p(completion token | everything before it), one unpadded sequence."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    token_logp = logp.gather(-1, ids[0, 1:, None])[:, 0]
    return token_logp[len(prompt_ids) - 1:].sum()


def tokenized(tok, pair: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) ids: the chat template's rendering, split after the prompt."""
    prompt = tok.apply_chat_template(pair["prompt"], add_generation_prompt=True, return_dict=False)
    out = [prompt]
    for side in ("chosen", "rejected"):
        full = tok.apply_chat_template(pair["prompt"] + pair[side], return_dict=False)
        assert full[:len(prompt)] == prompt
        out.append(full[len(prompt):])
    return tuple(out)


def margins(policy, ref, tok, pairs) -> list[tuple[float, float]]:
    """(chosen log-ratio, rejected log-ratio) per pair: log pi(y|x) - log pi_ref(y|x)."""
    out = []
    for p in pairs:
        prompt, chosen, rejected = tokenized(tok, p)
        out.append((float(completion_logp(policy, prompt, chosen) - completion_logp(ref, prompt, chosen)),
                    float(completion_logp(policy, prompt, rejected) - completion_logp(ref, prompt, rejected))))
    return out


def test_loss_is_the_dpo_sigmoid_loss_with_beta_from_the_job(tmp_path):
    from phi_lib.posttrain.train import build_trainer

    model = tiny_model_dir(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:2])
    beta = 0.37
    trainer = build_trainer(job("dpo", tmp_path / "dpo", model, data, beta=beta))
    torch.manual_seed(3)
    with torch.no_grad():  # move the policy away from its reference, or every log-ratio is 0
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = [trainer.train_dataset[i] for i in range(2)]
    tok = phi3_tokenizer()
    for row, pair in zip(rows, PAIRS):  # TRL tokenized the pair as the chat template renders it
        assert (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == tokenized(tok, pair)
    batch = trainer.data_collator([{k: v for k, v in r.items() if k.endswith("_ids")} for r in rows])
    trl_loss = trainer.compute_loss(trainer.model, batch)
    ratios = margins(trainer.model, trainer.ref_model, tok, PAIRS[:2])
    ours = torch.stack([-F.logsigmoid(torch.tensor(beta * (c - r))) for c, r in ratios]).mean()
    assert abs(ratios[0][0]) > 1e-3  # the check is not 0 == 0
    assert float(trl_loss) == pytest.approx(float(ours), rel=1e-4, abs=1e-6)


def test_training_grows_the_margin_and_lifts_chosen_above_the_reference(tmp_path):
    from transformers import AutoModelForCausalLM

    from phi_lib.io import read_jsonl
    from phi_lib.posttrain.train import run

    start = tiny_model_dir(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    final = run(job("dpo", tmp_path / "dpo", start, data, max_steps=8, learning_rate=5e-3))
    tok = phi3_tokenizer()
    ref = AutoModelForCausalLM.from_pretrained(start)
    policy = AutoModelForCausalLM.from_pretrained(final)
    after = margins(policy, ref, tok, PAIRS)
    assert margins(ref, ref, tok, PAIRS[:1]) == [(0.0, 0.0)]  # before training: no margin
    assert all(c - r > 1.0 for c, r in after), after  # implicit reward margin grew
    assert all(c > 0 for c, _ in after), after        # chosen more likely than under the reference
    logs = [h for h in read_jsonl(tmp_path / "dpo" / "metrics.jsonl") if "rewards/margins" in h]
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]
    end_id = tok.convert_tokens_to_ids("<|end|>")
    assert end_id in policy.generation_config.eos_token_id  # generation stops at the turn's end
    assert (final / "posttrain.json").is_file() and (final / "tokenizer.json").is_file()
