"""phi_lib.corpora: every format, corrupt records counted with file and line, data-folder
resolution, the real corpora of the data folder and the stdlib code corpus."""
import gzip
import json
import sysconfig

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi_lib.corpora import iter_documents
from phi_lib.io import ReadStats
from phi_lib.paths import MissingDataError

pytestmark = pytest.mark.unit


def _docs(spec, **kw):
    stats = ReadStats()
    return list(iter_documents(spec, stats=stats, **kw)), stats


def test_jsonl_with_corrupt_lines_counted(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "one", "id": 7}\n{"text": "trunc\n[1]\n{"title": "no text"}\n\n{"text": "two"}\n')
    docs, st = _docs(f)
    assert [d["text"] for d in docs] == ["one", "two"]
    assert docs[0]["id"] == "7" and docs[1]["id"] == "a.jsonl#2"  # n-th JSON object of the file
    assert docs[0]["source"] == docs[0]["corpus"] == "a"
    assert st.n_corrupt == 3
    errs = " | ".join(e for _, _, e in st.corrupt)
    assert "invalid JSON" in errs and "not an object" in errs and "no string field 'text'" in errs
    assert [line for _, line, _ in st.corrupt][:2] == [2, 3]  # file line numbers


@pytest.mark.parametrize("name", ["b.jsonl.gz", "b.json.gz"])
def test_gzip_jsonl_and_truncated_stream(tmp_path, name):
    f = tmp_path / name
    with gzip.open(f, "wt", encoding="utf-8") as g:
        for i in range(50):
            g.write(json.dumps({"text": f"doc {i} " * 20}) + "\n")
    docs, st = _docs(f)
    assert len(docs) == 50 and st.n_corrupt == 0
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])  # a download cut in the middle
    docs, st = _docs(f)
    assert len(docs) < 50 and st.n_corrupt == 1 and "unreadable" in st.corrupt[0][2]


def test_parquet_text_field_and_alias(tmp_path):
    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({"contents": ["alpha text", None, "gamma text"], "n": [1, 2, 3]}), f)
    docs, st = _docs(f)  # default field `text` is absent: `contents` is found
    assert [d["text"] for d in docs] == ["alpha text", "gamma text"]
    assert docs[0]["n"] == 1 and st.n_corrupt == 1 and st.records == 3
    docs, st = _docs(f, text_field="n")  # an explicit field is never second-guessed
    assert docs == [] and st.n_corrupt == 3
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    docs, st = _docs(bad)
    assert docs == [] and "unreadable parquet" in st.corrupt[0][2]


def test_markdown_sections_txt_eot_and_code_tree(tmp_path):
    (tmp_path / "book.md").write_text("preface\n# One\nfirst\n## Two\nsecond\n")
    docs, _ = _docs(tmp_path / "book.md")
    assert [d["text"] for d in docs] == ["preface", "# One\nfirst", "## Two\nsecond"]
    (tmp_path / "s.txt").write_text("story a<|endoftext|>story b\n<|endoftext|>")
    assert [d["text"] for d in _docs(tmp_path / "s.txt")[0]] == ["story a", "story b"]
    code = tmp_path / "src"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "m.py").write_text("def f():\n    return 1\n")
    (code / "x.c").write_text("int main(){}\n")
    (code / "latin.py").write_bytes(b"s = '\xe9'\n")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "m.py").write_text("skip me")
    docs, st = _docs(code)
    assert sorted(d["id"] for d in docs) == ["pkg/m.py", "x.c"]
    assert st.n_corrupt == 1 and "not UTF-8" in st.corrupt[0][2]


def test_folder_reads_data_files_and_names_subcorpora(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / "web" / sub).mkdir(parents=True)
        (tmp_path / "web" / sub / "x.jsonl").write_text(json.dumps({"text": sub}) + "\n")
    docs, _ = _docs(tmp_path / "web")
    assert [(d["corpus"], d["text"]) for d in docs] == [("web/a", "a"), ("web/b", "b")]


def test_relative_paths_resolve_in_data_folder_and_missing_fails(tmp_path):
    (tmp_path / "corpora").mkdir()
    (tmp_path / "corpora" / "t.jsonl").write_text('{"text": "hi"}\n')
    docs, _ = _docs("corpora/t.jsonl", data_dir=str(tmp_path))
    assert docs[0]["text"] == "hi"
    with pytest.raises(MissingDataError, match=r"corpus 'corpora/nope' not found: .*nope does not exist"):
        _docs("corpora/nope", data_dir=str(tmp_path))


def test_real_web_corpora_and_stdlib():
    docs, st = _docs("corpora/web")  # the data folder's samples: jsonl.gz, json.gz, parquet
    per = {}
    for d in docs:
        per[d["corpus"]] = per.get(d["corpus"], 0) + 1
    assert per == {"web/c4-en": 1000, "web/data-prep-kit-cc": 100, "web/dolma-cc-2019-30": 697,
                   "web/dolma-ccnet-head": 20}
    assert st.n_corrupt == 0 and len({d["id"] for d in docs}) == len(docs)
    code = []
    for d in iter_documents("stdlib"):
        code.append(d)
        if len(code) == 50:
            break
    assert all(d["id"].endswith(".py") and d["corpus"] == "stdlib" for d in code)
    assert (sysconfig.get_paths()["stdlib"] + "/" + code[0]["id"]).endswith(code[0]["id"])
