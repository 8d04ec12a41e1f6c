"""Generation: sampling filters, stop strings, left padding, the text helper with the real tokenizer."""
import pytest
import torch

from phi_lib.data.tokenizer import load_tokenizer
from phi_lib.model import PhiConfig, PhiForCausalLM, generate_text, sample_next
from phi_lib.model.generate import cut_at_stop, left_pad

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = PhiConfig.from_preset("phi-tiny", num_hidden_layers=2)
    return PhiForCausalLM(cfg).eval()


def test_sampling_filters():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]]).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, 0.0).tolist() == [0] * 400
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    # top_p 0.5: token 0 alone holds 0.72 of the mass, so it is the only one left
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert len(set(sample_next(logits, 5.0, generator=g).tolist())) >= 4
    # top_p just above token 0's mass keeps exactly tokens 0 and 1
    assert set(sample_next(logits, 1.0, top_p=0.8, generator=g).tolist()) == {0, 1}


def test_left_padding_does_not_change_a_row(tiny):
    short, long_ = [11, 12, 13], [21, 22, 23, 24, 25, 26, 27]
    alone = tiny.generate([short], max_new_tokens=8, eos_token_id=None)
    both = tiny.generate([short, long_], max_new_tokens=8, eos_token_id=None)
    assert both[0, -8:].tolist() == alone[0, -8:].tolist()
    ids, mask = left_pad([short, long_], pad_id=0)
    assert mask.tolist()[0] == [0, 0, 0, 0, 1, 1, 1]


def test_eos_and_max_new_tokens(tiny):
    first = tiny.generate([[5, 6, 7]], max_new_tokens=4, eos_token_id=None)[0, 3:].tolist()
    # make the first greedy token the EOS: the row stops right there
    out = tiny.generate([[5, 6, 7]], max_new_tokens=4, eos_token_id=first[0])
    assert out.shape[1] == 4 and out[0, -1].item() == first[0]
    assert tiny.generate([[5, 6, 7]], max_new_tokens=6, eos_token_id=None).shape == (1, 9)


def test_seeded_sampling_is_reproducible(tiny):
    run = lambda: tiny.generate([[1, 2, 3]], max_new_tokens=10, temperature=1.0, top_p=0.9,
                                eos_token_id=None, generator=torch.Generator().manual_seed(7))
    assert torch.equal(run(), run())


def test_generate_text_with_stop_strings(tiny):
    tok = load_tokenizer()
    free = generate_text(tiny, tok, ["def add(a, b):", "Once upon"], max_new_tokens=12)
    assert len(free) == 2 and all(isinstance(t, str) for t in free)
    # stop on a piece of what the model writes freely: output is cut before it
    target = free[0][3:6] if len(free[0]) >= 6 else free[0][:1]
    cut = generate_text(tiny, tok, ["def add(a, b):"], max_new_tokens=12, stop=[target])
    assert cut[0] == free[0][: free[0].find(target)]
    assert cut_at_stop("abc\n\ndef", ["\n\n", "de"]) == "abc"


def test_generated_ids_stay_in_the_real_vocabulary(tiny):
    tok = load_tokenizer()
    with torch.no_grad():
        tiny.lm_head.bias[len(tok):] = 100.0  # padded rows would win every argmax
    try:
        out = generate_text(tiny, tok, ["x"], max_new_tokens=5)
        assert isinstance(out[0], str)
        ids = tiny.generate([[1, 2]], max_new_tokens=3, eos_token_id=None, allowed_vocab=len(tok))
        assert (ids[0, 2:] < len(tok)).all()
    finally:
        with torch.no_grad():
            tiny.lm_head.bias.zero_()
