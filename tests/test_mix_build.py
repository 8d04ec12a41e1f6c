"""Stage 03 on constructed sources: corrupt records counted, missing stage outputs named,
`datasets` sources, deterministic by seed, tokenization resumable."""
import json

import numpy as np
import pytest

from phi_lib.data.sources import SourceError
from phi_lib.data.tokenize import tokenize_source
from test_mix_fixtures import build, corpora, make_docs, mix_config, write_jsonl  # noqa: F401

pytestmark = pytest.mark.unit


def test_corrupt_and_textless_records_are_counted(tmp_path):
    docs = make_docs(40, 3, "doc")
    write_jsonl(tmp_path / "data" / "corpora" / "bad" / "a.jsonl", docs,
                extra_lines=('{"text": "truncated ', '[1, 2]', '{"title": "no text field"}', '{"text": "  "}'))
    cfg = mix_config(tmp_path, {"bad": {"path": "corpora/bad", "weight": 1.0}},
                     total_tokens=500, seq_len=16, val_fraction=0.0)
    b = build(cfg)
    table = b.sources_table()
    assert table.loc["bad", "docs"] == 40  # the 40 good documents, nothing else
    assert table.loc["bad", "corrupt"] == 3  # bad JSON, not an object, no `text` field
    assert table.loc["bad", "empty"] == 1
    mix = json.loads((b.out / "mix.json").read_text())
    examples = " ".join(str(e) for e in mix["sources"]["bad"]["corrupt_examples"])
    assert "no string field 'text'" in examples
    man = json.loads((b.out / "manifest.json").read_text())
    assert man["counts"]["bad/corrupt"] == 3 and man["counts"]["bad/empty"] == 1
    assert "val" not in mix["splits"]


def test_missing_stage_output_names_source_and_folder(tmp_path):
    from phi_lib.data import MixBuilder

    cfg = mix_config(tmp_path, {"synthetic": {"path": "01_synthesize", "weight": 1.0}},
                     total_tokens=500, seq_len=16)
    with pytest.raises(SourceError, match=r"mix\.sources\.synthetic: '01_synthesize' is an output of "
                                          r"stage 01 but .*/t/01_synthesize does not exist: run stage 01"):
        MixBuilder(cfg, tmp_path / "o").resolve()
    cfg = mix_config(tmp_path, {"web": {"path": "corpora/nope", "weight": 1.0}}, total_tokens=500, seq_len=16)
    with pytest.raises(SourceError, match=r"mix\.sources\.web: corpus 'corpora/nope' not found: .*nope does not exist"):
        MixBuilder(cfg, tmp_path / "o").resolve()


def test_stage_output_path_is_relative_to_run(tmp_path):
    cfg = mix_config(tmp_path, {"synthetic": {"path": "01_synthesize", "weight": 1.0}},
                     total_tokens=300, seq_len=16, val_fraction=0.0)
    docs = make_docs(30, 4, "syn")
    write_jsonl(cfg.run_dir / "01_synthesize" / "textbook" / "shard-00000.jsonl", docs[:20])
    write_jsonl(cfg.run_dir / "01_synthesize" / "code_exercises" / "shard-00000.jsonl", docs[20:])
    b = build(cfg)
    assert b.sources_table().loc["synthetic", "docs"] == 30  # all kinds


def test_datasets_source(tmp_path):
    import datasets

    docs = make_docs(50, 5, "hf")
    datasets.Dataset.from_dict({"content": docs}).save_to_disk(str(tmp_path / "saved"))
    cfg = mix_config(tmp_path, {"hf": {"hf_dataset": str(tmp_path / "saved"), "text_field": "content",
                                       "weight": 1.0}}, total_tokens=800, seq_len=16, val_fraction=0.0)
    b = build(cfg)
    assert b.sources_table().loc["hf", "docs"] == 50
    assert b.sources["hf"].describe().startswith("datasets:")


def test_deterministic_by_seed(tmp_path, corpora):  # noqa: F811
    data_tmp, _ = corpora
    sources = {"alpha": {"path": str(data_tmp / "data/corpora/alpha"), "weight": 0.5},
               "beta": {"path": str(data_tmp / "data/corpora/beta"), "weight": 0.5}}
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        cfg = mix_config(tmp_path / name, sources, total_tokens=4000, seq_len=16, val_fraction=0.1)
        cfg.run.seed = seed
        b = build(cfg)
        outs.append((b.out / "train" / "shard-00000.bin").read_bytes() +
                    (b.out / "val" / "shard-00000.bin").read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_tokenization_resumes_without_duplicates(tmp_path, corpora):  # noqa: F811
    from phi_lib.data.sources import resolve_source

    data_tmp, docs = corpora
    src = resolve_source("alpha", "corpora/alpha", None, text_field="text", run_dir=tmp_path,
                         data_dir=str(data_tmp / "data"))
    full = tokenize_source(src, tmp_path / "full", "codegen-350M-mono", progress=False, batch_docs=32)
    part = tokenize_source(src, tmp_path / "resumed", "codegen-350M-mono", progress=False,
                           batch_docs=32, max_records=100)  # "killed" after 100 records
    assert not part.state["done"] and part.n_docs == 100 and part.state["records"] == 100
    # a torn write after the last commit is cut back on resume
    with open(tmp_path / "resumed" / "tokens.bin", "ab") as f:
        f.write(b"\x01\x02\x03")
    resumed = tokenize_source(src, tmp_path / "resumed", "codegen-350M-mono", progress=False, batch_docs=32)
    assert resumed.state["done"] and resumed.n_docs == len(docs["alpha"]) == full.n_docs
    assert np.array_equal(np.asarray(resumed.tokens), np.asarray(full.tokens))
    assert np.array_equal(resumed.hashes, full.hashes)
    assert resumed.state["read_records"] == 300 and resumed.state["corrupt"] == 0


def _stream_docs(mix_dir, split, tok):
    """The documents of a packed split, decoded (whole ones only: the tail is cut)."""
    from phi_lib.packed import PackedDataset

    ds = PackedDataset(mix_dir, split)
    text = tok.decode(np.concatenate([ds[i] for i in range(len(ds))]).tolist())
    return text.split("<|endoftext|>")[:-1]


def test_finetune_set_is_packed_beside_the_mixture_and_removed_when_unset(tmp_path, corpora):  # noqa: F811
    from phi_lib.data.tokenizer import load_tokenizer

    data_tmp, _ = corpora
    alpha = {"alpha": {"path": str(data_tmp / "data/corpora/alpha"), "weight": 1.0}}
    ft = {"finetune.source": str(data_tmp / "data/corpora/beta"), "finetune.total_tokens": 3000}
    b = build(mix_config(tmp_path, alpha, total_tokens=2000, seq_len=16, val_fraction=0.1, **ft))
    table = b.pack()  # packed already: a rerun resumes and returns the same table
    assert list(table.index) == ["train", "val", "finetune/train", "finetune/val"]
    assert table.loc["finetune/train", "windows"] == 3000 // 16
    tok = load_tokenizer("codegen-350M-mono", data_dir=str(tmp_path / "data"))
    ft_docs = _stream_docs(b.out / "finetune", "train", tok)
    assert ft_docs and all(d.startswith("beta") for d in ft_docs)  # the finetune set only
    assert all(d.startswith("alpha") for d in _stream_docs(b.out, "train", tok))
    mix = json.loads((b.out / "mix.json").read_text())
    assert list(mix["sources"]) == ["alpha"] and mix["finetune"]["name"] == "finetune"
    assert mix["finetune"]["epochs"] > 1  # 60 short documents repeated to fill 3000 tokens
    assert (b.out / ".cache" / "finetune-tokenized" / "finetune" / "tokens.bin").is_file()
    man = json.loads((b.out / "manifest.json").read_text())
    assert man["metrics"]["finetune_windows"] == 3000 // 16 and man["counts"]["finetune/docs"] == 60
    # the same run without a finetune set: the stale set is gone, stage 05 cannot read it
    b = build(mix_config(tmp_path, alpha, total_tokens=2000, seq_len=16, val_fraction=0.1))
    assert not (b.out / "finetune").exists() and "finetune" not in json.loads(
        (b.out / "mix.json").read_text())


def test_finetune_set_named_in_the_mixture_shares_its_tokens_and_validation_split(tmp_path, corpora):  # noqa: F811
    data_tmp, _ = corpora
    sources = {"alpha": {"path": str(data_tmp / "data/corpora/alpha"), "weight": 0.6},
               "beta": {"path": str(data_tmp / "data/corpora/beta"), "weight": 0.4}}
    b = build(mix_config(tmp_path, sources, total_tokens=4000, seq_len=16, val_fraction=0.1,
                         **{"finetune.source": "beta", "finetune.total_tokens": 800}))
    assert not (b.out / ".cache" / "finetune-tokenized").exists()  # the mixture's cache of beta
    main = json.loads((b.out / "mix.json").read_text())
    ft = json.loads((b.out / "finetune" / "mix.json").read_text())
    assert list(ft["sources"]) == ["beta"] and ft["seq_len"] == 16 and ft["seed"] == 7
    # same seed and fraction: the finetune's validation documents are the mixture's
    assert ft["sources"]["beta"]["val_docs"] == main["sources"]["beta"]["val_docs"] > 0


def test_missing_finetune_set_names_its_key(tmp_path, corpora):  # noqa: F811
    from phi_lib.data import MixBuilder

    data_tmp, _ = corpora
    cfg = mix_config(tmp_path, {"alpha": {"path": str(data_tmp / "data/corpora/alpha"), "weight": 1.0}},
                     total_tokens=500, seq_len=16,
                     **{"finetune.source": "01_synthesize/code_exercises"})
    with pytest.raises(SourceError, match=r"^mix\.finetune\.source: '01_synthesize/code_exercises' is "
                                          r"an output of stage 01 but .* does not exist: run stage 01 "
                                          r".*--set mix\.finetune\.source=corpora/"):
        MixBuilder(cfg, tmp_path / "o").resolve()


def test_stage_output_source_reads_only_the_stage_data_files(tmp_path):
    """A source naming a stage folder reads that stage's named outputs (its data shards), never
    its manifest, done marker, step stats or executed notebook (they are not documents)."""
    cfg = mix_config(tmp_path, {"synthetic": {"path": "01_synthesize", "weight": 1.0}},
                     total_tokens=300, seq_len=16, val_fraction=0.0)
    stage = cfg.run_dir / "01_synthesize"
    docs = make_docs(30, 4, "syn")
    write_jsonl(stage / "textbook" / "shard-00000.jsonl", docs[:20])
    write_jsonl(stage / "code_exercises" / "shard-00000.jsonl", docs[20:])
    (stage / "manifest.json").write_text(json.dumps({"stage": "01_synthesize", "counts": {}}, indent=2))
    (stage / "stage.json").write_text(json.dumps({"stage": "01_synthesize"}, indent=2))
    (stage / ".steps").mkdir()
    (stage / ".steps" / "generate.json").write_text(json.dumps({"step": "generate"}, indent=2))
    (stage / "report.json").write_text('{"not": "a document"}\n')
    b = build(cfg)
    table = b.sources_table()
    assert table.loc["synthetic", "docs"] == 30 and table.loc["synthetic", "corrupt"] == 0
    assert table.loc["synthetic", "records"] == 30
    assert "synthetic" not in b.inputs and "tokenizer" in b.inputs  # 01 is covered by its outputs digest
