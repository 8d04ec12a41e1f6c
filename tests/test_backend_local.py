"""The local transformers backend really generates with the SmolLM2 GGUF model.

References are independent of the backend's batching code: `model.generate` on one
unpadded prompt, and a teacher-forced forward pass for the log-probabilities.
"""
import pytest
import torch

from phi_lib.backends import get_backend
from phi_lib.config import BackendConfig, SamplingConfig

pytestmark = pytest.mark.slow

GREEDY = SamplingConfig(max_new_tokens=8, temperature=0.0)
PROMPTS = ["What is the capital of France?", "Write one word: a color."]


@pytest.fixture(scope="module")
def backend():
    b = get_backend(BackendConfig(model="smollm2", batch_size=2, device="cpu", cache=False))
    b.load()
    return b


def _reference(backend, prompt: str) -> list[int]:
    lm, tok = backend.load()
    ids = tok(backend.render(prompt, chat=True), add_special_tokens=False,
              return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                          do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_real_generation_matches_transformers_and_logprobs_match_forward(backend):
    lm, tok = backend.load()
    out = backend.generate(PROMPTS, GREEDY, logprobs=3)
    assert all(c.text.strip() for c in out), [c.text for c in out]
    for prompt, c in zip(PROMPTS, out):  # batched + left padded == one prompt alone
        ref = [t for t in _reference(backend, prompt) if t != tok.eos_token_id]
        assert c.text == tok.decode(ref, skip_special_tokens=True)
        assert c.completion_tokens == len(ref) and len(c.logprobs) == len(ref)
        assert c.prompt_tokens > 10
    # log-probabilities = a teacher-forced forward pass over prompt + completion
    c = out[0]
    p_ids = tok(backend.render(PROMPTS[0], chat=True), add_special_tokens=False)["input_ids"]
    g_ids = _reference(backend, PROMPTS[0])[:c.completion_tokens]
    with torch.inference_mode():
        logits = lm(torch.tensor([p_ids + g_ids])).logits[0].float()
    logp = torch.log_softmax(logits[len(p_ids) - 1:-1], dim=-1)
    expect = [logp[j, t].item() for j, t in enumerate(g_ids)]
    assert c.logprobs == pytest.approx(expect, abs=1e-3)
    for lp, top in zip(c.logprobs, c.top_logprobs):  # greedy: the chosen token is the top one
        assert len(top) == 3 and max(top.values()) == pytest.approx(lp, abs=1e-5)


def test_stop_sequence_cuts_text_and_sampling_is_seeded(backend):
    full = backend.generate([PROMPTS[0]], GREEDY)[0].text
    stop = full.split()[1]  # the second word of the greedy answer
    [c] = backend.generate([PROMPTS[0]], SamplingConfig(max_new_tokens=8, temperature=0.0,
                                                        stop=[stop]))
    assert c.finish_reason == "stop" and c.text == full[:full.index(stop)]
    hot = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=0.95)
    a = backend.generate(PROMPTS, hot, seeds=[1, 2])
    b = backend.generate(PROMPTS, hot, seeds=[1, 2])
    assert [c.text for c in a] == [c.text for c in b]


def test_openai_server_over_the_real_model_matches_local(backend):
    from phi_lib.backends.server import OpenAIServer

    with OpenAIServer(backend, max_batch=2) as srv:
        http = get_backend(BackendConfig(kind="openai", model="smollm2", base_urls=[srv.base_url],
                                         cache=False))
        remote = http.generate(PROMPTS, GREEDY)
    local = backend.generate(PROMPTS, GREEDY)
    assert [c.text for c in remote] == [c.text for c in local]
    assert [c.completion_tokens for c in remote] == [c.completion_tokens for c in local]
