"""The codegen-350M-mono tokenizer: ids of the MANIFEST check, exact round trips, batching."""
import pytest

from phi_lib.data.tokenizer import load_tokenizer
from phi_lib.paths import MissingDataError

pytestmark = pytest.mark.unit

CODE = ("class Stack:\n    def __init__(self):\n        self.items = []\n\n"
        "\tdef push(self, x):\n\t\tself.items.append(x)  # two  spaces\n"
        + " " * 40 + "deep = 1\n" + "\t" * 12 + "tabs = 2\n\t \t  mixed\n"
        "s = 'naïve café 中文 🙂'\r\n   trailing   ")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("codegen-350M-mono")


def test_sizes_and_eos(tok):
    assert len(tok) == 50295
    assert tok.eos_id == 50256 and tok.id_to_token(tok.eos_id) == "<|endoftext|>"
    assert tok.backend.get_vocab_size(with_added_tokens=False) == 50257


def test_manifest_reference_ids(tok):
    # The ids recorded in shared/tokenizers/MANIFEST.md (checked there with tokenizers 0.23).
    text = "def f(x):\n    return x  # hello\n\t\tpass<|endoftext|>"
    assert tok.encode(text) == [4299, 277, 7, 87, 2599, 198, 50284, 7783, 2124, 50286, 2,
                                23748, 198, 50294, 6603, 50256]


def test_whitespace_runs_use_codegen_tokens(tok):
    # CodeGen's added tokens cover runs of 2-31 spaces and 2-9 tabs (ids 50257-50294);
    # they match before BPE, so an indented line is one whitespace token + the code.
    assert tok.encode("        y") == [tok.token_to_id(" " * 8), tok.token_to_id("y")]
    assert tok.encode("\t\t\t") == [tok.token_to_id("\t" * 3)]


@pytest.mark.parametrize("text", [CODE, "", " ", "\t", "a" * 5000, "x  \n\n\n\t\t\t\t\t\t\t\t\t\t\t"])
def test_round_trip_exact(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_batch_equals_single_and_matches_transformers(tok):
    from transformers import AutoTokenizer

    from phi_lib.paths import data_path

    texts = [CODE, "hello world", "", "\t\tdef g():\n\t\t\treturn 0\n"] * 3
    batch = tok.encode_batch(texts)
    assert batch == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, add_eos=True)[0] == tok.encode(texts[0]) + [tok.eos_id]
    assert tok.decode_batch(batch) == texts
    hf = AutoTokenizer.from_pretrained(str(data_path("tokenizers/codegen-350M-mono")))
    assert batch == [hf(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_decode_accepts_tensors(tok):
    import torch

    ids = tok.encode(CODE)
    assert tok.decode(torch.tensor(ids)) == CODE


def test_gpt2_folder_without_merges_header():
    gpt2 = load_tokenizer("gpt2")
    assert len(gpt2) == 50257
    assert gpt2.encode("hello world") == [31373, 995]  # first merge "Ġ t" must not be dropped
    assert gpt2.encode(" the") == [262]
    assert gpt2.decode(gpt2.encode(CODE)) == CODE


def test_path_name(tok, tmp_path):
    from phi_lib.paths import data_path

    folder = data_path("tokenizers/codegen-350M-mono")
    assert load_tokenizer(str(folder / "tokenizer.json")).encode(CODE) == tok.encode(CODE)


def test_missing_tokenizer_names_local_path_and_hub(tmp_path):
    with pytest.raises(MissingDataError, match="no-such-tokenizer"):
        load_tokenizer("no-such-tokenizer", data_dir=str(tmp_path))
    # a hub name that is not reachable offline: one error naming both places
    with pytest.raises(MissingDataError, match="hub fallback 'nobody/none-xyz' failed"):
        load_tokenizer("nobody/none-xyz", data_dir=str(tmp_path))
