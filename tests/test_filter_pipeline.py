"""Stage 02 with real models: the datatrove block filters a corpus end to end through
datatrove's LocalPipelineExecutor, and notebook 02 of the smoke run (the session `smoke_run`) wrote
consistent annotations, classifier, scores (all by the saved classifier), kept shards and
manifest."""
import json

import numpy as np
import pytest

EDU = ["Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make glucose and oxygen.",
       "To add two fractions, first rewrite them with a common denominator, then add the numerators.",
       "The water cycle describes how water evaporates, condenses into clouds and falls again as rain.",
       "A prime number has exactly two divisors: one and itself. For example, 7 is prime but 8 is not.",
       "In Python, a for loop repeats a block of code once for every item in a list.",
       "The heart pumps blood through arteries to the organs and veins bring it back to the heart.",
       "Newton's first law says an object keeps moving at constant speed unless a force acts on it.",
       "Multiplication is repeated addition: 3 times 4 means adding 4 three times, which gives 12.",
       "Volcanoes form where molten rock from the mantle rises through cracks in the Earth's crust.",
       "An adjective is a word that describes a noun, such as 'blue' in 'the blue sky'.",
       "Gravity pulls objects toward each other; on Earth it makes dropped things fall to the ground.",
       "Cells are the basic units of life, and every living thing is made of one or more cells."]
SPAM = ["BUY NOW!!! Cheap watches, 90% off, free shipping, click here to order today!!!",
        "Hot singles in your area are waiting, sign up free and meet them tonight.",
        "Best casino bonus 2019, spin and win big, deposit now and get 200 free spins.",
        "Lose 20 pounds in 10 days with this one weird trick doctors hate, order pills now.",
        "Limited offer: designer handbags at outlet prices, shop the sale before it ends.",
        "Call now for the lowest car insurance quotes, save hundreds in minutes, act fast.",
        "Get rich quick with crypto signals, join our VIP group, guaranteed profits daily.",
        "Cheap flights and hotel deals, book now and save, prices going up tomorrow.",
        "Click to claim your free iPhone, you are our lucky visitor of the day, hurry.",
        "Replica sneakers wholesale, bulk orders welcome, contact us on WhatsApp now.",
        "Payday loans with no credit check, cash in your account within one hour.",
        "Watch free movies online in HD, no registration, thousands of titles updated daily."]


@pytest.mark.slow
@pytest.mark.parametrize("head", ["ridge", "fasttext"])
def test_datatrove_block_filters_a_corpus_end_to_end(tmp_path, head):
    from phi_lib.filter.classifier import train_classifier
    from phi_lib.filter.datatrove_block import run_local
    from phi_lib.filter.fasttext_head import FastTextParams, train_fasttext

    train_edu, train_spam = EDU[:8], SPAM[:8]
    y = np.array([5.0] * 8 + [0.0] * 8)
    if head == "fasttext":  # the text itself, no embedder
        clf, _ = train_fasttext(train_edu + train_spam, y, threshold=3.0, val_fraction=0.0, seed=0,
                                params=FastTextParams(bucket=10_000, dim=16, epoch=50, lr=1.0, seed=0))
    else:
        from phi_lib.embed import get_embedder

        X = get_embedder("minilm").embed(train_edu + train_spam)
        clf, _ = train_classifier(X, y, kind="ridge", threshold=3.0, val_fraction=0.0, seed=0,
                                  embedder_name="minilm")
    clf.save(tmp_path / "clf")
    inp = tmp_path / "in"
    inp.mkdir()
    held_out = [(t, "edu") for t in EDU[8:]] + [(t, "spam") for t in SPAM[8:]]
    with open(inp / "docs.jsonl", "w") as f:
        for i, (t, k) in enumerate(held_out):
            f.write(json.dumps({"id": f"{k}-{i}", "text": t}) + "\n")
    run_local(str(inp), str(tmp_path / "out"), str(tmp_path / "clf"), threshold=2.5,
              logging_dir=str(tmp_path / "logs"), batch_size=3)
    kept = [json.loads(line) for p in sorted((tmp_path / "out").glob("*.jsonl"))
            for line in p.read_text().splitlines()]
    ids = {d["id"].split("-")[0] for d in kept}
    assert ids == {"edu"} and len(kept) >= 3, [(d["id"], d["metadata"]["edu_score"]) for d in kept]
    assert all(d["metadata"]["edu_score"] >= 2.5 for d in kept)
    stats = json.loads((tmp_path / "logs" / "stats.json").read_text())
    block = next(s for s in stats if "educational" in s["name"])
    assert block["stats"]["total"] == 8 and block["stats"]["forwarded"] == len(kept)
    assert block["stats"]["dropped_low_edu_score"] == 8 - len(kept)


@pytest.mark.notebooks
def test_stage_02_outputs_of_the_smoke_run(smoke_run):
    from phi_lib.filter import load_classifier

    cfg = smoke_run.cfg
    out = cfg.run_dir / "02_filter_web"
    assert (out / "executed.ipynb").is_file()
    man = json.loads((out / "manifest.json").read_text())
    n, n_ref = cfg.filter.n_annotate, cfg.filter.n_reference
    assert cfg.filter.label_source == "reference"  # web: reference positives + the web sample
    assert man["counts"]["web/annotations/annotated"] == n + n_ref
    assert man["counts"]["code/annotations/annotated"] == n
    assert sorted(man["figures"]) == ["classifier.png", "eval.png", "scores.png"]
    assert man["counts"]["corrupt_output_records"] == 0
    ann = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert len(ann) == 2 * n + n_ref
    assert all(r["status"] in ("ok", "no_score", "out_of_range", "empty", "error", "reference") for r in ann)
    # the stage says how good its web filter is, on a holdout it never trained on: a defined
    # AUC, well above chance, and above the length baseline within length quartiles
    m = man["metrics"]
    auc, q_auc = m["web/eval/holdout/classifier/roc_auc"], m["web/eval/holdout/classifier/mean_quartile_auc"]
    assert auc is not None and auc > 0.75, m
    check_aucs_defined_or_explained(man)
    assert q_auc > m["web/eval/holdout/length/mean_quartile_auc"] + 0.2, m
    rep = json.loads((out / "eval.json").read_text())["holdout"]  # the zero-shot judge baseline:
    judged = rep["scorers"].get("judge", {}).get("n", 0)  # every page it was asked scored or counted
    assert judged + rep["unscored_by_judge"] == cfg.filter.eval_judge_docs
    assert man["counts"]["web/eval/holdout/docs"] == 2 * cfg.filter.eval_per_class
    for kind, folder in (("web", "kept"), ("code", "kept_code")):
        kept = [json.loads(line) for p in (out / folder).glob("*.jsonl") for line in p.read_text().splitlines()]
        info = json.loads((out / f"{folder}.json").read_text())
        assert kept and len(kept) == man["counts"][f"{kind}/kept"] == sum(info["kept"].values())
        assert all({"id", "text", "source", "score"} <= set(d) for d in kept)
        assert min(d["score"] for d in kept) >= info["threshold"] == man["metrics"][f"{kind}/threshold"]
        for corpus, k in info["kept"].items():  # per source: kept <= read
            assert 0 < k <= man["counts"][f"{kind}/{corpus}/read"]
    for kind, folder in (("web", "classifier"), ("code", "classifier_code")):  # one classifier
        key = json.loads((out / folder / "classifier.json").read_text())["fingerprint"]["key"]
        scored = [json.loads(line) for p in (out / "scored" / kind).glob("*.jsonl")
                  for line in p.read_text().splitlines()]
        assert len(scored) == man["counts"][f"{kind}/scored"] and {r["classifier"] for r in scored} == {key}
    assert man["drops"] and all(k.split("/")[0] in ("web", "code") for k in man["drops"])
    assert {"corpus:corpora/web/c4-en", "benchmark:humaneval"} <= set(man["inputs"])
    scores = load_classifier(out / "classifier").score(["The water cycle moves water from oceans to clouds."])
    assert len(scores) == 1 and isinstance(scores[0], float)


def check_aucs_defined_or_explained(man: dict) -> None:
    """Every ROC AUC of a stage-02 manifest is a number, or null with the reason beside it
    (issue 15: the smoke's code path had a null validation AUC and nothing said why)."""
    reasons = man.get("undefined_reasons", {})
    for k, v in man["metrics"].items():
        if k.endswith("roc_auc") and v is None:
            assert k in man["undefined_metrics"] and reasons.get(k), (k, reasons)
        elif k.endswith("roc_auc"):
            assert 0 <= v <= 1 and k not in reasons, (k, v)
