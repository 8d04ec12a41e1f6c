"""The FLOP bound that perf/eval_vs_lm_eval.py prints, on constructed requests."""
import importlib.util
from pathlib import Path

from phi_lib.evaluate.prompts import MCItem


class _CharTok:
    """One token per character, no special tokens: the counts can be done by hand."""
    bos_token_id = eos_token_id = 0

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "\x00"


def _load_flop_bound():
    path = Path(__file__).parents[1] / "perf" / "eval_vs_lm_eval.py"
    spec = importlib.util.spec_from_file_location("eval_vs_lm_eval", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.flop_bound


flop_bound = _load_flop_bound()


def test_shared_context_and_shared_choice_prefixes_are_counted_once():
    # context "abcd" (4 tokens), choices " xy" and " xz": inputs "abcd x" + "y"/"z" minus the
    # last token -> "abcd x" twice (lm-eval's cache merges identical inputs: 6 positions);
    # the trie holds a,b,c,d,' ',x = 6 nodes, of which d,' ',x predict continuation tokens.
    item = MCItem(["abcd", "abcd"], [" xy", " xz"], ["xy", "xz"], 0)
    ref, low = flop_bound(_CharTok(), [item], n_layer_params=10, n_head_params=1)
    assert ref == 2 * 6 * 11
    assert low == 2 * (6 * 10 + 3 * 1)
    # distinct choices: lm-eval runs both whole inputs (12 positions); the trie shares
    # "abcd " (the choices' leading space too): 7 nodes, d, ' ', p, r predict tokens
    item = MCItem(["abcd", "abcd"], [" pq", " rs"], ["pq", "rs"], 0)
    ref, low = flop_bound(_CharTok(), [item], n_layer_params=10, n_head_params=1)
    assert ref == 2 * (6 + 6) * 11
    assert low == 2 * (7 * 10 + 4 * 1)
