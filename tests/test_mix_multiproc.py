"""Multi-process tokenization gives exactly the single-process result."""
import numpy as np
import pytest

from phi_lib.data.sources import resolve_source
from phi_lib.data.tokenize import tokenize_source
from test_mix_fixtures import corpora  # noqa: F401

pytestmark = pytest.mark.slow


def test_num_proc_2_matches_num_proc_1(tmp_path, corpora):  # noqa: F811
    data_tmp, docs = corpora
    src = resolve_source("alpha", "corpora/alpha", None, text_field="text", run_dir=tmp_path,
                         data_dir=str(data_tmp / "data"))
    one = tokenize_source(src, tmp_path / "one", "codegen-350M-mono", num_proc=1, batch_docs=16,
                          progress=False)
    two = tokenize_source(src, tmp_path / "two", "codegen-350M-mono", num_proc=2, batch_docs=16,
                          progress=False)
    assert two.n_docs == one.n_docs == len(docs["alpha"])
    assert np.array_equal(np.asarray(two.tokens), np.asarray(one.tokens))
    assert np.array_equal(two.lengths, one.lengths) and np.array_equal(two.hashes, one.hashes)
