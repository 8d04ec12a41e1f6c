"""Stage 08 on a phi3-vision-tiny base: SFT through the stage's steps on image-text
conversations over the data folder's test images (paths relative to the record file), one
text-only conversation and broken records (counted by reason, named, the rest kept); the loss
is on the assistant tokens only (checked against the token positions of the assistant turn),
goes down, the saved model reloads as Phi3VisionForCausalLM and generates from an image
prompt; a changed SFT learning rate retrains, an unchanged rerun does not; DPO stops before
any work naming the key."""
import json

import pytest
import torch

from phi_lib.config import load
from phi_lib.paths import data_path
from tests.posttrain_fixtures import write_jsonl

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(data_path("images") is None, reason="needs the data folder")]
CAPTIONS = {"chelsea.png": "A cat.", "rocket.jpg": "A rocket launch.", "camera.png": "A man with a camera.",
            "retina.jpg": "An eye."}
ASK = "<|image_1|>\nWhat is in the picture?"


def tiny_vision_dir(folder):
    """A freshly initialized phi3-vision-tiny checkpoint (one head of 96: half the preset's
    width) with the phi-3-vision tokenizer."""
    from phi_lib.data.tokenizer import load_tokenizer
    from phi_lib.model.phi3_vision import Phi3VisionForCausalLM

    torch.manual_seed(0)
    Phi3VisionForCausalLM.from_preset("phi3-vision-tiny", hidden_size=96, num_attention_heads=1,
                                      num_key_value_heads=1, intermediate_size=256).save_pretrained(folder)
    load_tokenizer("phi-3-vision").to_transformers().save_pretrained(str(folder))
    return folder


def write_conversations(folder):
    """Four image-text conversations (images relative to the file), one text-only, then a
    missing image (line 6) and tags that do not match the images (line 7)."""
    (folder / "chats").mkdir()
    (folder / "chats" / "imgs").symlink_to(data_path("images"))
    rows = [{"messages": [{"role": "user", "content": ASK}, {"role": "assistant", "content": c}],
             "images": [f"imgs/{n}"]} for n, c in CAPTIONS.items()]
    rows.append({"messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "What is 2 + 3?"},
                              {"role": "assistant", "content": "5."}]})
    rows.append({"messages": rows[0]["messages"], "images": ["imgs/gone.png"]})
    rows.append({"messages": [{"role": "user", "content": "<|image_1|> <|image_2|>\nTwo?"},
                              {"role": "assistant", "content": "One."}], "images": ["imgs/text.png"]})
    return write_jsonl(folder / "chats" / "vision.jsonl", rows)


def stage_for(tmp_path, lr=3e-3):
    from phi_lib.posttrain.stage import PosttrainStage

    base = tmp_path / "tiny"
    if not base.is_dir():
        tiny_vision_dir(base)
        write_conversations(tmp_path)
    cfg = load({"posttrain": {
        "base_model": str(base), "chat_template": "phi-3", "precision": "fp32", "device": "cpu",
        "sft_sources": {"vis": {"path": str(tmp_path / "chats"), "format": "messages", "weight": 1.0}},
        "sft_examples": 5,
        "sft": {"lr": lr, "schedule": "constant", "warmup_ratio": 0.0, "max_steps": 3,
                "global_batch_size": 2, "micro_batch_size": 2, "max_length": 512,
                "packing": False, "save_steps": 100, "log_every": 1}},
        "mix": {"image_text": {"num_crops": 1}}},  # 1 crop: 313 tokens an image
        {"run.output_root": str(tmp_path / "out")})
    lines = []
    stage = PosttrainStage(cfg, log=lines.append)
    return stage, lines


def test_vision_sft_through_the_stage(tmp_path):
    from phi_lib.data.tokenizer import load_tokenizer
    from phi_lib.io import read_jsonl
    from phi_lib.model import PhiForCausalLM
    from phi_lib.model.phi3_vision import Phi3VisionForCausalLM
    from phi_lib.model.phi3_vision_processor import Phi3VisionProcessor
    from phi_lib.posttrain import vision

    stage, lines = stage_for(tmp_path)
    stage.prepare_base()
    data = stage.sft_data()
    # the broken records are counted by reason and named; the rest of the set is kept
    assert data["drops"] == {"sft/vis/missing_image": 1, "sft/vis/bad_image_tags": 1}
    named = {d["reason"]: d for d in read_jsonl(stage.data / "sft_drops.jsonl")}
    assert named["missing_image"]["where"] == "vis/vision.jsonl:6/0" and "gone.png" in named["missing_image"]["detail"]
    assert named["bad_image_tags"]["where"] == "vis/vision.jsonl:7/0"
    rows = list(read_jsonl(stage.data / "sft.jsonl"))
    assert len(rows) == 5 and sum(bool(r.get("images")) for r in rows) == 4
    assert all(r["images"][0] == str(tmp_path / "chats" / "imgs" / r["images"][0].rsplit("/", 1)[1])
               for r in rows if r.get("images"))  # relative to the record file's folder

    # one collated example: the ids are the processor's (stage 03's format), the labels are
    # exactly the assistant turn's tokens (after `<|assistant|>` up to its `<|end|>`)
    tok = load_tokenizer("phi-3-vision")
    row = next(r for r in rows if r.get("images"))
    batch = vision.Collator(stage._processor())([row, next(r for r in rows if not r.get("images"))])
    enc = Phi3VisionProcessor(tok, num_crops=1).encode(row)
    ids, labels, mask = batch["input_ids"][0], batch["labels"][0], batch["attention_mask"][0]
    assert ids[mask.bool()].tolist() == enc.input_ids
    assert torch.equal(batch["pixel_values"], enc.pixel_values) and len(batch["image_sizes"]) == 1
    start = ids.tolist().index(tok.token_to_id("<|assistant|>")) + 1
    end = start + ids[start:].tolist().index(tok.token_to_id("<|end|>")) + 1
    trained = (labels != -100).nonzero()[:, 0].tolist()
    assert trained == list(range(start, end))
    assert tok.decode(labels[start:end].tolist()) == row["messages"][-1]["content"] + "<|end|>"
    assert (ids[:start] < 0).sum() == 313  # the image's tokens and the user turn: no targets
    text_labels = batch["labels"][1][batch["labels"][1] != -100].tolist()
    assert tok.decode(text_labels) == "5.<|end|>"

    # SFT through the stage: the loss goes down; the model reloads as phi-3-vision and generates
    res = stage.train_sft()
    history = [h for h in read_jsonl(stage.out / "sft" / "metrics.jsonl") if "loss" in h]
    assert len(history) == 3 and res["counts"]["sft_steps"] == 3
    final = stage.model_dir("sft")
    model = PhiForCausalLM.from_pretrained(final)
    assert isinstance(model, Phi3VisionForCausalLM)
    base = PhiForCausalLM.from_pretrained(stage.model_dir("base"))
    whole = vision.Collator(stage._processor())(rows)  # the assistant-only loss on the whole set
    with torch.no_grad():
        before, after = (float(vision._loss_module()(m)(**whole)["loss"]) for m in (base, model))
    assert after < before - 0.1, (before, after)
    assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, base.model.layers[0].mlp.down_proj.weight)
    gen = json.loads((final / "generation_config.json").read_text())
    assert tok.token_to_id("<|end|>") in gen["eos_token_id"]
    assert json.loads((final / "posttrain.json").read_text())["fingerprint"]["key"] == \
        json.loads((stage.out / "sft" / "fingerprint.json").read_text())["key"]
    proc = Phi3VisionProcessor.from_folder(final, load_tokenizer(str(final)))
    g = proc("<|user|>\n" + ASK + "<|end|>\n<|assistant|>\n", [data_path("images") / "chelsea.png"])
    out = model.generate(g["input_ids"], g["attention_mask"], pixel_values=g["pixel_values"],
                         image_sizes=g["image_sizes"], max_new_tokens=3, eos_token_id=None,
                         allowed_vocab=len(tok))
    assert out.shape == (1, g["input_ids"].shape[1] + 3) and (out[:, -3:] >= 0).all()

    manifest = stage.write_manifest()  # the drops by reason, as the runner writes them
    assert {k: v for k, v in manifest["drops"].items() if k.startswith("sft/")} == \
        {"sft/vis/missing_image": 1, "sft/vis/bad_image_tags": 1}
    assert manifest["counts"]["sft_conversations"] == 5 and "sft/vis/vision.jsonl" in manifest["inputs"]

    # DPO on a vision base stops before any work, naming the key
    with pytest.raises(ValueError, match=r"posttrain\.base_model=.*phi-3-vision.*DPO is not implemented"):
        stage.preference_data()
    assert not (stage.data / "pairs.jsonl").exists()

    # an unchanged rerun trains nothing; a changed SFT learning rate retrains
    weights = (final / "model.safetensors").stat().st_mtime_ns
    again, _ = stage_for(tmp_path)
    again.prepare_base()
    again.sft_data()
    again.train_sft()
    assert (final / "model.safetensors").stat().st_mtime_ns == weights
    changed, log = stage_for(tmp_path, lr=1e-3)
    changed.prepare_base()
    changed.sft_data()
    changed.train_sft()
    assert any("posttrain.sft.lr" in line and "training again" in line for line in log), log
    assert (final / "model.safetensors").stat().st_mtime_ns != weights
    retrained = PhiForCausalLM.from_pretrained(final)
    assert not torch.equal(retrained.model.layers[0].mlp.down_proj.weight, model.model.layers[0].mlp.down_proj.weight)


def test_vision_settings_it_cannot_use_stop_before_work(tmp_path):
    stage, _ = stage_for(tmp_path)
    stage.pc.sft_sources["vis"].path = str(tmp_path / "nowhere")  # files not brought: the key named
    stage.prepare_base()
    with pytest.raises(FileNotFoundError, match=r"posttrain\.sft_sources\.vis\.path: .*nowhere"):
        stage.sft_data()
    stage.pc.sft.packing = True
    with pytest.raises(ValueError, match=r"posttrain\.sft\.packing"):
        stage.prepare_base()
    stage.pc.sft.packing, stage.pc.lora.enabled = False, True
    with pytest.raises(ValueError, match=r"posttrain\.lora\.enabled"):
        stage.prepare_base()


def test_vision_sft_resumes_from_its_last_complete_checkpoint(tmp_path, capsys):
    """Checkpoints hold our format (config.json phi3_v + weights, optimizer and RNG states);
    a run cut after checkpoint 2 resumes there and ends with the uninterrupted run's weights."""
    import shutil

    from safetensors.torch import load_file

    from phi_lib.posttrain.train import run

    stage, _ = stage_for(tmp_path)
    stage.prepare_base()
    stage.sft_data()
    data = stage.data / "sft.jsonl"
    fp = stage._phase_fp("sft", "base", data)

    def job(folder):
        j = stage._job("sft", folder, "base", data, ["messages"], fp)
        j["args"].update(max_steps=4, save_steps=2)
        return j

    a, b = tmp_path / "a", tmp_path / "b"
    reference = load_file(str(run(job(a)) / "model.safetensors"))
    ckpt = a / "run" / "checkpoint-2"
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "phi3_v"
    assert (ckpt / "trainer_state.json").is_file() and (ckpt / "optimizer.pt").is_file()
    # a run killed after checkpoint 2 (its files are the uninterrupted run's), one cut mid-save
    shutil.copytree(ckpt, b / "run" / "checkpoint-2")
    (b / "run" / "checkpoint-3").mkdir()
    resumed = load_file(str(run(job(b)) / "model.safetensors"))
    assert not (b / "run" / "checkpoint-3").exists()
    assert f"resuming sft from {b / 'run' / 'checkpoint-2'}" in capsys.readouterr().out
    history = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]  # none redone or lost
    assert set(resumed) == set(reference)
    for k in reference:
        assert torch.allclose(reference[k], resumed[k], atol=1e-6), k


def test_a_text_base_counts_image_records_and_keeps_the_rest(tmp_path):
    from phi_lib.io import read_jsonl
    from phi_lib.posttrain.stage import PosttrainStage
    from tests.posttrain_fixtures import tiny_model_dir

    rows = write_jsonl(tmp_path / "chats" / "mixed.jsonl", [
        {"messages": [{"role": "user", "content": ASK}, {"role": "assistant", "content": "A cat."}],
         "images": [str(data_path("images") / "chelsea.png")]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}],
         "images": "chelsea.png"}])
    cfg = load({"posttrain": {"base_model": str(tiny_model_dir(tmp_path / "tiny")),
                              "sft_sources": {"m": {"path": str(rows), "weight": 1.0}}, "sft_examples": 2}},
               {"run.output_root": str(tmp_path / "out")})
    stage = PosttrainStage(cfg, log=lambda s: None)
    stage.prepare_base()
    stats = stage.sft_data()
    assert stats["drops"] == {"sft/m/needs_vision_model": 1, "sft/m/malformed_images": 1}
    assert {d["where"] for d in read_jsonl(stage.data / "sft_drops.jsonl")} == {"m/mixed.jsonl:1/0", f"{rows}:3"}
    assert all("images" not in r for r in read_jsonl(stage.data / "sft.jsonl"))
