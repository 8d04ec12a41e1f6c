"""phi3-vision-tiny through the stage code path: stage 03 turns image-text records (test
images with short captions, plus broken ones) into its image-text set, counting and naming
each drop; stage 05's trainer streams them through the processor with the image encoder
frozen; the checkpoint reloads, reproduces the loss and generates; the freeze is part of the
checkpoint's fingerprint."""
import json

import pytest
import torch

from phi_lib.image_text import IMAGE_TEXT_DIR, ImageTextDataset
from phi_lib.paths import data_path
from phi_lib.train.launcher import prepare
from phi_lib.train.loop import Trainer, training_data
from phi_lib.train.metrics import read_metrics
from test_train_fixtures import build_tiny_mix, train_config

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(data_path("images") is None, reason="needs the data folder")]
CAPTIONS = {"chelsea.png": "A cat.", "rocket.jpg": "A rocket launch.", "camera.png": "A man with a camera.",
            "retina.jpg": "An eye.", "text.png": "Some text."}
VISION_TINY = {"preset": "phi3-vision-tiny"}
IMAGE_TEXT = {"image_text.num_crops": 1}  # 1 crop: 313 tokens an image


def image(name):
    return str(data_path("images") / name)


def write_records(folder):
    """Five good records (one in the chat format), then one of each kind of bad one."""
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    rows = [{"text": f"<|image_1|>\n{c}", "images": [image(n)]} for n, c in CAPTIONS.items()][:4]
    rows.append({"messages": [{"role": "user", "content": "<|image_1|>\nWhat is this?"},
                              {"role": "assistant", "content": CAPTIONS["text.png"]}],
                 "images": [image("text.png")]})
    rows += [{"text": "<|image_1|>\nGone.", "images": ["missing.png"]},          # line 6
             {"text": "<|image_1|>\nBroken.", "images": ["broken.png"]},         # line 7
             {"text": "<|image_1|> <|image_2|>\nTwo?", "images": [image("chelsea.png")]}]  # line 8
    lines = [json.dumps(r) for r in rows] + ["{not json"]                     # line 9
    path = folder / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def vision_mix(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vision_mix")
    records = write_records(folder)
    # val_fraction 0.3 draws one of the five good records (seed 7) into validation: the draw
    # reads the images by file name, so it is the same wherever the data folder lies
    return build_tiny_mix(folder, seq_len=384, tokenizer="phi-3-vision", total_tokens=8_000,
                          val_fraction=0.3, **{"image_text.sources": [str(records)], **IMAGE_TEXT})


def test_stage_03_writes_image_text_records_and_names_each_drop(vision_mix):
    index = json.loads((vision_mix / IMAGE_TEXT_DIR / "index.json").read_text())
    assert index["counts"]["records"] == 9 and index["counts"]["train"] + index["counts"]["val"] == 5
    assert index["counts"]["val"] == 1  # the tests below validate on it
    assert index["drops"] == {"corrupt_record": 1, "missing_image": 1, "unreadable_image": 1,
                              "bad_image_tags": 1, "too_long": 0}
    named = {d["record"]: d["reason"] for d in index["dropped"]}
    assert named == {"captions.jsonl:6": "missing_image", "captions.jsonl:7": "unreadable_image",
                     "captions.jsonl:8": "bad_image_tags", "captions.jsonl:9": "corrupt_record"}
    pack = json.loads((vision_mix / ".steps" / "pack.json").read_text())
    assert pack["drops"]["image_text/missing_image"] == 1 and pack["counts"]["image_text/records"] == 9
    # the stored ids are the processor's expansion of the record (+ EOS), with pixels to match
    from phi_lib.data.tokenizer import load_tokenizer
    from phi_lib.model.phi3_vision_processor import Phi3VisionProcessor

    tok = load_tokenizer("phi-3-vision")
    rec = next(json.loads(l) for l in (vision_mix / IMAGE_TEXT_DIR / "train.jsonl").read_text().splitlines())
    line = int(rec["record"].split(":")[1])
    src = json.loads((vision_mix.parent.parent / "captions.jsonl").read_text().splitlines()[line - 1])
    enc = Phi3VisionProcessor(tok, num_crops=1).encode(src)
    assert rec["input_ids"] == enc.input_ids + [tok.eos_id]
    batch = ImageTextDataset(vision_mix, "train").batch([rec])
    assert torch.equal(batch.pixel_values, enc.pixel_values) and torch.equal(batch.image_sizes, enc.image_sizes)
    with pytest.raises(ValueError, match="not phi-3-vision"):  # a text model cannot use them
        training_data(vision_mix, torch.nn.Linear(1, 1))



def test_image_text_fingerprint_follows_the_records_and_their_images(tmp_path):
    """Stage 03's data fingerprint covers the record files and every image they name."""
    from phi_lib.config import load
    from phi_lib.data.image_text import content_key

    records = write_records(tmp_path)
    cfg = load({"run": {"name": "k", "output_root": str(tmp_path)}}, {"mix.image_text.sources": [str(records)]})
    before = content_key(cfg)
    assert content_key(cfg) == before
    (tmp_path / "broken.png").write_bytes(b"other bytes")  # an image a record names
    after_image = content_key(cfg)
    records.write_text(records.read_text().replace("A cat.", "A cat on a chair."))
    assert len({before, after_image, content_key(cfg)}) == 3


def test_tiny_vision_trains_frozen_encoder_through_stage_05_reloads_and_generates(vision_mix, tmp_path):
    from phi_lib.model import PhiForCausalLM
    from phi_lib.model.phi3_vision import Phi3VisionForCausalLM
    from phi_lib.train.fingerprint import phase_fingerprint

    cfg = train_config(tmp_path, vision_mix, "vis", model=VISION_TINY, mix=IMAGE_TEXT, max_steps=3,
                       save_every=3, eval_every=3, warmup_steps=0, global_batch_size=2,
                       micro_batch_size=2, eval_batches=1, lr=3e-3, freeze_image_encoder=True)
    assert cfg.model.tokenizer == "phi-3-vision"
    out = cfg.run_dir / "05_train"
    prepare(cfg, out)
    trainer = Trainer(cfg, out, log=lambda *_: None)
    initial = trainer.build_model(None)  # the seeded init the run starts from
    trainer.run()
    records = read_metrics(out / "metrics.jsonl")
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0], losses

    step = out / "checkpoints" / "step-3"
    back = PhiForCausalLM.from_pretrained(step)
    assert isinstance(back, Phi3VisionForCausalLM)
    clip = "model.vision_embed_tokens.img_processor."
    before, after = initial.state_dict(), back.state_dict()
    frozen = [k for k in before if k.startswith(clip)]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # encoder unchanged
    assert not torch.equal(before[f"model.vision_embed_tokens.img_projection.0.weight"],
                           after["model.vision_embed_tokens.img_projection.0.weight"])
    assert not torch.equal(before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"])

    # the reloaded weights give the validation loss the trainer logged, and that loss (text
    # tokens only) is the one of the full logits
    from phi_lib.model.phi3_vision import text_token_loss

    logged = next(r["val_loss"] for r in records if "val_loss" in r)
    val = next(ImageTextDataset(vision_mix, "val").iter_batches(2, 0, 1, seed=0))[0]
    with torch.no_grad():
        assert abs(float(val.loss(back.eval())) - logged) < 1e-5
        positions = (val.attention_mask.cumsum(-1) - 1).clamp(min=0)
        full = back(val.input_ids, attention_mask=val.attention_mask, position_ids=positions,
                    pixel_values=val.pixel_values, image_sizes=val.image_sizes)
        assert abs(float(text_token_loss(full, val.input_ids, val.attention_mask)) - logged) < 1e-5

    # and generate from a caption prompt (the checkpoint's tokenizer is the model's)
    from phi_lib.data.tokenizer import load_tokenizer
    from phi_lib.model.phi3_vision_processor import Phi3VisionProcessor

    tok = load_tokenizer("phi-3-vision")
    assert (step / "tokenizer.json").is_file()
    g = Phi3VisionProcessor(tok, num_crops=1)("<|image_1|>\n", [image("chelsea.png")])
    new = back.generate(g["input_ids"], g["attention_mask"], pixel_values=g["pixel_values"],
                        image_sizes=g["image_sizes"], max_new_tokens=3, eos_token_id=None,
                        allowed_vocab=len(tok))
    assert new.shape == (1, g["input_ids"].shape[1] + 3) and (new[:, -3:] >= 0).all()

    # the freeze changes what training produces: the checkpoint's fingerprint names it
    state = json.loads((step / "trainer_state.json").read_text())
    unfrozen = train_config(tmp_path, vision_mix, "vis", model=VISION_TINY, mix=IMAGE_TEXT, max_steps=3,
                            save_every=3, eval_every=3, warmup_steps=0, global_batch_size=2,
                            micro_batch_size=2, eval_batches=1, lr=3e-3, freeze_image_encoder=False)
    assert phase_fingerprint(cfg, "pretrain").changes(state["fingerprint"]) == []
    assert phase_fingerprint(unfrozen, "pretrain").changes(state["fingerprint"]) == ["train.freeze_image_encoder"]
    # and training all puts CLIP into the optimizer (frozen: only the rest)
    from phi_lib.train.optim import make_optimizer

    def trained(c):
        model = Trainer(c, out, log=lambda *_: None).build_model(None)
        opt = make_optimizer(model, "adamw", 1e-3, [0.9, 0.98], 1e-8, 0.1)
        ids = {id(p) for g in opt.param_groups for p in g["params"]}
        return {n for n, p in model.named_parameters() if id(p) in ids}

    names = {n for n, _ in initial.named_parameters()}
    assert trained(unfrozen) == names and trained(cfg) == {n for n in names if not n.startswith(clip)}


def test_mixed_stream_draws_both_kinds_and_resumes_exactly(vision_mix):
    """`mix.image_text.weight` < 1: seeded rounds of image-text and packed text micro-batches;
    a resume from a recorded sample continues the same stream."""
    from phi_lib.image_text import MixedStream
    from phi_lib.packed import PackedDataset

    stream = MixedStream(ImageTextDataset(vision_mix, "train"), PackedDataset(vision_mix, "train"), 0.5)
    full = list(zip(range(6), stream.iter_batches(1, seed=3)))
    kinds = [isinstance(b, torch.Tensor) for _, (b, _) in full]
    assert any(kinds) and not all(kinds), kinds
    assert [s for _, (_, s) in full] == [1, 2, 3, 4, 5, 6]
    resumed = [b for _, (b, _) in zip(range(3), stream.iter_batches(1, start_sample=3, seed=3))]
    for (_, (want, _)), got in zip(full[3:], resumed):
        assert torch.equal(want if torch.is_tensor(want) else want.input_ids,
                           got if torch.is_tensor(got) else got.input_ids)
    windows = [b for b in (b for _, (b, _) in full) if torch.is_tensor(b)]
    assert windows[0].shape == (1, 384) and (windows[0] >= 0).all()  # text windows, no images
