"""phi_lib.scoring against a naive scorer (one full forward per request, log-softmax over the
vocabulary at every position): shared contexts, continuation batches by length, the output
layer on scored positions only (used only where the model's own logits confirm it), on a
transformers model and on ours behind the HF interface."""
import pytest
import torch
import torch.nn.functional as F

from phi_lib.model import PhiConfig, PhiForCausalLM
from phi_lib.model.hf_interface import CausalLMInterface
from phi_lib.scoring import Forward, _length_chunks, loglikelihood_tokens

pytestmark = pytest.mark.unit
VOCAB = 96


def llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


class ScaledLogits(torch.nn.Module):
    """A model whose logits are not its output layer's (as phi-3-small's muP division)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_decoder(self):
        return self.inner.get_decoder()

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, cache=None, **kw):
        out = self.inner(input_ids, cache=cache, **kw)
        out.logits = out.logits / 3.0
        return out


def ours():
    torch.manual_seed(0)
    return CausalLMInterface(PhiForCausalLM(PhiConfig.from_preset("phi-tiny", num_hidden_layers=2,
                                                                  vocab_size=VOCAB)).eval())


def requests():
    """Contexts with 1-5 continuations of 1-7 tokens (shared ones of >= 8 tokens take the
    cached path), and single requests (the plain path)."""
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(1, VOCAB, (n,), generator=g).tolist()
    pairs = []
    for n_ctx, lens in [(12, [1, 7, 3]), (9, [5, 5, 2, 1, 6]), (20, [1, 1]), (15, [4, 2]),
                        (3, [2, 3])]:
        ctx = rand(n_ctx)
        pairs += [(ctx, rand(k)) for k in lens]
    pairs += [(rand(10), rand(4)), (rand(6), rand(1))]
    return pairs


def naive(model, pairs):
    out = []
    with torch.no_grad():
        for ctx, cont in pairs:
            ids = torch.tensor([ctx + cont[:-1]])
            lp = F.log_softmax(model(ids).logits[0].float(), -1)[len(ctx) - 1:]
            tgt = torch.tensor(cont)
            out.append((float(lp.gather(1, tgt[:, None]).sum()), bool((lp.argmax(-1) == tgt).all())))
    return out


@pytest.mark.parametrize("build", [llama, lambda: ScaledLogits(llama()), ours],
                         ids=["transformers", "post-processed-logits", "ours"])
@pytest.mark.parametrize("share", [True, False])
def test_scores_match_a_naive_scorer(build, share):
    model = build()
    pairs = requests()
    want = naive(model, pairs)
    got = loglikelihood_tokens(model, pairs, batch_size=3, share_context=share)
    for (lp, greedy), (lp_ref, greedy_ref) in zip(got, want):
        assert lp == pytest.approx(lp_ref, abs=1e-4)
        assert greedy == greedy_ref


def test_output_layer_split_only_where_it_gives_the_models_logits():
    assert Forward.of(llama()).head is not None           # decoder + lm_head = its logits
    assert Forward.of(ScaledLogits(llama())).head is None  # the probe sees the scaling
    assert Forward.of(ours()).head is None                 # no decoder/head accessors: full logits


def test_length_chunks_partition_in_order_and_split_long_from_short():
    lengths = [30, 29, 28, 20, 12, 9, 8, 6, 5, 4, 3, 2, 2, 1, 1]
    chunks = _length_chunks(lengths)
    assert [i for c in chunks for i in c] == list(range(len(lengths)))
    padded = sum(len(c) * lengths[c[0]] for c in chunks)
    assert padded < len(lengths) * lengths[0] / 2  # one batch would pad to 30 everywhere
    assert _length_chunks([5, 5, 5, 5]) == [[0, 1, 2, 3]]  # equal lengths: one batch
