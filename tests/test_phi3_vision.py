"""Phi-3-vision against Microsoft's reference implementation (tests/phi3_vision_reference.py):
the model (HD features, projections, logits, both directions of weight exchange), the image
processor and prompt expansion, the published config and size, checkpoints and generation."""
import json

import pytest
import torch
from safetensors.torch import load_file

from phi_lib.data.tokenizer import load_tokenizer
from phi_lib.model import PhiConfig, build_model
from phi_lib.model.config import VISION_128K_LONG_FACTOR, VISION_128K_SHORT_FACTOR
from phi_lib.model.phi3_vision import (CLIP_PUBLISHED, WTE_DUPLICATE, Phi3VisionConfig,
                                       Phi3VisionForCausalLM, image_token_counts)
from phi_lib.model.phi3_vision_processor import Phi3VisionProcessor, hd_size
from phi_lib.model.planning import param_count
from phi_lib.paths import data_path

import phi3_vision_reference as reference

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(reference.reference_dir() is None, reason="needs the data folder")]
PUBLISHED_PARAMS = 4_146_621_440
IMAGES = ("chelsea.png", "rocket.jpg", "retina.jpg", "camera.png", "text.png")
TOL = 2e-5


def image(name):
    return str(data_path("images") / name)


def published_config_json():
    return json.loads((data_path("tokenizers/phi-3-configs") / "Phi-3-vision-128k-instruct.json").read_text())


def tiny(**kw) -> Phi3VisionConfig:
    # init std 0.1: peaked attention and logits of std ~1, so that a mix-up shows; a CLIP of
    # 3 layers so that "second-to-last" differs from both the last and the first; one head of
    # 96 (the published factors' head dim) at width 96 keeps the 32,064-row LM head cheap
    return Phi3VisionConfig.from_preset("phi3-vision-tiny", **{
        "initializer_range": 0.1, "clip_num_hidden_layers": 3, "hidden_size": 96,
        "num_attention_heads": 1, "num_key_value_heads": 1, "intermediate_size": 256, **kw})


def randomize(model):
    """Separators, norms and biases away from their 0/1 init, so that a mix-up shows."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or name.endswith("_GN") or name.endswith("class_embedding"):
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def pair():
    """(ours, the reference with our weights), the tiny config."""
    torch.manual_seed(0)
    cfg = tiny()
    ours = randomize(Phi3VisionForCausalLM(cfg)).eval()
    return ours, reference.reference_model(cfg, ours.state_dict())


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("phi-3-vision")


@pytest.fixture(scope="module")
def batch(tok):
    """Two left-padded prompts at 2 crops: one image (text.png: 1 x 2 crops), two images
    (chelsea, camera: one crop each)."""
    from phi_lib.model.phi3_vision_processor import collate

    proc = Phi3VisionProcessor(tok, num_crops=2)
    good, bad = proc.encode_records([
        {"text": "<|user|>\n<|image_1|>\nRead it.<|end|>\n<|assistant|>\n", "images": [image("text.png")]},
        {"text": "<|user|>\n<|image_1|>\n<|image_2|>\nCompare them, in detail.<|end|>\n<|assistant|>\n",
         "images": [image("chelsea.png"), image("camera.png")]}])
    assert not bad
    return collate([e for _, e in good], tok.pad_id)


@pytest.fixture(scope="module")
def small_batch(tok):
    """At 1 crop (313 tokens an image): two prompts of one image each, row 0 left-padded."""
    from phi_lib.model.phi3_vision_processor import collate

    proc = Phi3VisionProcessor(tok, num_crops=1)
    good, _ = proc.encode_records([
        {"text": "<|image_1|>\nA photo of", "images": [image("rocket.jpg")]},
        {"text": "<|user|>\n<|image_1|>\nWhat is written here?<|end|>\n<|assistant|>\n",
         "images": [image("text.png")]}])
    return collate([e for _, e in good], tok.pad_id)


def positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


def ref_logits(ref, b):
    return ref(b["input_ids"].clone(), attention_mask=b["attention_mask"], position_ids=positions(b["attention_mask"]),
               pixel_values=b["pixel_values"], image_sizes=b["image_sizes"], use_cache=False).logits


# ----------------------------------------------------------------------------- model parity
def capture_projector(model):
    """Hook collecting (HD features, projected features) of each image the model embeds."""
    seen = []
    hook = model.model.vision_embed_tokens.img_projection.register_forward_hook(
        lambda mod, args, out: seen.append((args[0].reshape(-1, args[0].shape[-1]), out.reshape(-1, out.shape[-1]))))
    return seen, hook


def test_features_projections_and_logits_match_the_reference(pair, batch):
    """One and two images per prompt, row 0 left-padded: HD features, projector outputs and
    logits of our model equal the reference's with the same weights."""
    ours, ref = pair
    mask = batch["attention_mask"]
    assert (mask[0] == 0).sum() > 0 and mask[1].all()
    (theirs_seen, h1), (mine_seen, h2) = capture_projector(ref), capture_projector(ours)
    try:
        with torch.no_grad():
            theirs = ref_logits(ref, batch)
            mine = ours(batch["input_ids"], attention_mask=mask, position_ids=positions(mask),
                        pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"])
    finally:
        h1.remove(), h2.remove()
    counts = image_token_counts(batch["image_sizes"].tolist())
    assert [len(f) for f, _ in theirs_seen] == [len(f) for f, _ in mine_seen] == counts and len(counts) == 3
    assert mine_seen[0][0].shape[-1] == 4 * ours.config.clip_hidden_size
    for (ref_feat, ref_proj), (feat, proj) in zip(theirs_seen, mine_seen):
        torch.testing.assert_close(feat, ref_feat, rtol=0, atol=TOL)
        torch.testing.assert_close(proj, ref_proj, rtol=0, atol=TOL)
    real = mask.bool()
    assert mine[real].std() > 0.5
    torch.testing.assert_close(mine[real], theirs[real], rtol=0, atol=5 * TOL)


def test_reference_weights_load_into_ours(small_batch):
    """The other direction: the reference's own random init, its state dict into ours."""
    torch.manual_seed(1)
    cfg = tiny()
    ref = randomize(reference.reference_model(cfg))
    state = ref.state_dict()
    assert WTE_DUPLICATE in state  # the reference's second name of the text embedding
    ours = Phi3VisionForCausalLM(cfg).eval()
    ours.load_state_dict(Phi3VisionForCausalLM.from_checkpoint_names(state), strict=True)
    mask = small_batch["attention_mask"]
    with torch.no_grad():
        theirs = ref_logits(ref, small_batch)
        mine = ours(small_batch["input_ids"], attention_mask=mask, position_ids=positions(mask),
                    pixel_values=small_batch["pixel_values"], image_sizes=small_batch["image_sizes"])
    real = mask.bool()
    torch.testing.assert_close(mine[real], theirs[real], rtol=0, atol=5 * TOL)


def test_glb_sub_order_matches_the_reference(batch):
    """The other HD layout (`embd_layer.hd_transform_order: glb_sub`, the reference's default):
    the global view first, then glb_GN, then the tiled crops; features and logits as the
    reference's, and not the published sub_glb layout's."""
    torch.manual_seed(2)
    ours = randomize(Phi3VisionForCausalLM(tiny(hd_transform_order="glb_sub", clip_num_hidden_layers=2))).eval()
    ref = reference.reference_model(ours.config, ours.state_dict())
    assert ref.model.vision_embed_tokens.hd_transform_order == "glb_sub"
    mask = batch["attention_mask"]
    (theirs_seen, h1), (mine_seen, h2) = capture_projector(ref), capture_projector(ours)
    try:
        with torch.no_grad():
            theirs = ref_logits(ref, batch)
            mine = ours(batch["input_ids"], attention_mask=mask, position_ids=positions(mask),
                        pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"])
            ours.config.hd_transform_order = "sub_glb"
            published = ours.model.vision_embed_tokens.hd_transform(batch["pixel_values"],
                                                                     batch["image_sizes"])
    finally:
        h1.remove(), h2.remove()
    assert len(mine_seen) == len(published) == 3
    for (ref_feat, _), (feat, _) in zip(theirs_seen, mine_seen):
        torch.testing.assert_close(feat, ref_feat, rtol=0, atol=TOL)
    # text.png at 2 crops (1 x 2) reorders; a 1-crop image's global view is its crop
    assert (mine_seen[0][0] - published[0]).abs().max() > 0.1
    real = mask.bool()
    torch.testing.assert_close(mine[real], theirs[real], rtol=0, atol=5 * TOL)


def test_text_only_prompts_and_missing_images():
    cfg = tiny(clip_num_hidden_layers=1)
    model = Phi3VisionForCausalLM(cfg).eval()
    ids = torch.tensor([[1, 450, 338, 2]])
    with torch.no_grad():
        assert model(ids).shape == (1, 4, cfg.vocab_size)
        with pytest.raises(ValueError, match="no pixel_values"):
            model(torch.tensor([[1, -1, -1, 2]]))


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_has_the_published_names_and_reloads(tmp_path, pair, batch):
    ours, _ = pair
    ours.save_pretrained(tmp_path / "ckpt")
    keys = set(load_file(str(tmp_path / "ckpt" / "model.safetensors")))
    clip = {k for k in keys if ".img_processor." in k}
    assert clip and all(k.startswith(CLIP_PUBLISHED) for k in clip)  # transformers 4.x's CLIP layout
    assert {"model.vision_embed_tokens.glb_GN", "model.vision_embed_tokens.sub_GN",
            "model.vision_embed_tokens.img_projection.0.weight",
            "model.vision_embed_tokens.img_projection.2.bias", "model.embed_tokens.weight"} <= keys
    assert WTE_DUPLICATE not in keys
    hf = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert hf["model_type"] == "phi3_v" and hf["rope_scaling"]["type"] == "su"
    back = Phi3VisionForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert isinstance(back, Phi3VisionForCausalLM) and back.config == ours.config.replace(name=back.config.name)
    with torch.no_grad():
        args = dict(pixel_values=batch["pixel_values"][:1], image_sizes=batch["image_sizes"][:1])
        ids = batch["input_ids"][:1, batch["attention_mask"][0].argmax():]
        torch.testing.assert_close(back(ids, **args), ours(ids, **args), rtol=0, atol=0)


# ----------------------------------------------------------------------------- published config
def test_published_config_is_the_preset_and_its_size():
    d = published_config_json()
    cfg = Phi3VisionConfig.from_hf_dict(d)
    preset = PhiConfig.from_preset("phi-3-vision")
    assert isinstance(preset, Phi3VisionConfig)
    assert cfg.replace(name="", pad_token_id=None) == preset.replace(name="", pad_token_id=None)
    assert cfg.rope_short_factor == VISION_128K_SHORT_FACTOR and cfg.rope_long_factor == VISION_128K_LONG_FACTOR
    back = preset.to_hf_dict()
    for key in ("embd_layer", "rope_scaling", "hidden_size", "num_hidden_layers", "vocab_size",
                "original_max_position_embeddings", "max_position_embeddings", "sliding_window"):
        assert back[key] == d[key], key
    assert {k: back["img_processor"][k] for k in d["img_processor"]} == d["img_processor"]
    with torch.device("meta"):
        ours = build_model(preset)
        theirs = reference.reference_model(preset)  # ViT-L/14-336 is its module constant
    assert isinstance(ours, Phi3VisionForCausalLM)
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in theirs.parameters()) == PUBLISHED_PARAMS
    assert param_count(preset)["total"] == n  # the planner counts the image side too
    with torch.device("meta"):
        assert param_count(tiny())["total"] == sum(p.numel() for p in build_model(tiny()).parameters())
    assert set(ours.to_checkpoint_names(ours.state_dict())) == \
        {k.replace("img_processor.", "img_processor.vision_model.") for k in theirs.state_dict()} - \
        {WTE_DUPLICATE.replace("img_processor.", "")}


def test_config_variants_we_do_not_implement_are_named():
    d = published_config_json()
    with pytest.raises(NotImplementedError, match="projection_cls='linear'"):
        Phi3VisionConfig.from_hf_dict({**d, "embd_layer": {**d["embd_layer"], "projection_cls": "linear"}})
    with pytest.raises(NotImplementedError, match="clip-vit-base-patch32"):
        Phi3VisionConfig.from_hf_dict({**d, "img_processor": {**d["img_processor"],
                                                              "model_name": "openai/clip-vit-base-patch32"}})
    with pytest.raises(ValueError, match="image_token_count"):
        tiny(clip_patch_size=28)


# ----------------------------------------------------------------------------- processor
@pytest.fixture(scope="module")
def ref_processor(tok):
    return reference.reference_processor(16, tok.to_transformers())


@pytest.mark.parametrize("name", IMAGES)
def test_processor_matches_the_reference(name, tok, ref_processor):
    from PIL import Image

    prompt = "<|user|>\n<|image_1|>\nDescribe the image.<|end|>\n<|assistant|>\n"
    ours = Phi3VisionProcessor.from_folder(data_path("tokenizers/phi-3-vision"), tok)
    assert ours.num_crops == 16
    mine = ours(prompt, [image(name)])
    with Image.open(image(name)) as im:
        theirs = ref_processor(prompt, [im])
        size = im.size
    torch.testing.assert_close(mine["pixel_values"], theirs["pixel_values"], rtol=0, atol=1e-6)
    assert mine["image_sizes"].tolist() == [list(theirs["image_sizes"][0])]
    h, w = mine["image_sizes"][0].tolist()
    assert (w, h) == hd_size(*size, 16) and (h // 336) * (w // 336) <= 16  # crops capped
    count = ref_processor.image_processor.calc_num_image_tokens_from_image_size(*size)
    assert (mine["input_ids"] < 0).sum() == image_token_counts([[h, w]])[0] == count
    assert torch.equal(mine["input_ids"], theirs["input_ids"])


def test_processor_two_images_per_prompt_match_the_reference(tok):
    from PIL import Image

    prompt = "<|image_1|>\nFirst, this.\n<|image_2|> and then that: what differs?"
    ref_proc = reference.reference_processor(6, tok.to_transformers())
    mine = Phi3VisionProcessor(tok, num_crops=6)(prompt, [image("rocket.jpg"), image("text.png")])
    with Image.open(image("rocket.jpg")) as a, Image.open(image("text.png")) as b:
        theirs = ref_proc(prompt, [a, b])
    torch.testing.assert_close(mine["pixel_values"], theirs["pixel_values"], rtol=0, atol=1e-6)
    assert mine["image_sizes"].tolist() == [list(s) for s in theirs["image_sizes"]]
    assert torch.equal(mine["input_ids"], theirs["input_ids"])
    assert sorted(set(mine["input_ids"][0].tolist()) & {-1, -2}) == [-2, -1]


def test_bad_records_are_named_and_the_rest_kept(tok, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    proc = Phi3VisionProcessor(tok, num_crops=2)
    records = [{"text": "<|image_1|> a cat", "images": [image("chelsea.png")]},
               {"text": "<|image_1|> gone", "images": [str(tmp_path / "missing.jpg")]},
               {"text": "<|image_1|> broken", "images": [str(broken)]},
               {"text": "<|image_1|> and <|image_2|>", "images": [image("camera.png")]},
               {"messages": [{"role": "user", "content": "<|image_1|>\nWhat is it?"}],
                "images": [image("text.png")]}]
    good, bad = proc.encode_records(records, names=[f"caps.jsonl:{i + 1}" for i in range(5)])
    assert [i for i, _ in good] == [0, 4]
    messages = dict(bad)
    assert "caps.jsonl:2" in messages[1] and "missing.jpg" in messages[1] and "not found" in messages[1]
    assert "caps.jsonl:3" in messages[2] and "broken.png" in messages[2] and "not a readable image" in messages[2]
    assert "caps.jsonl:4" in messages[3] and "2 image tag(s)" in messages[3] and "1 image(s)" in messages[3]
    ids = good[1][1].input_ids  # the chat format, <s> before each text piece
    assert ids[:2] == [tok.bos_id, tok.token_to_id("<|user|>")] and ids.count(tok.bos_id) == 2
    tail = tok.encode("<|end|>\n<|assistant|>\n")
    assert ids[-len(tail):] == tail


# ----------------------------------------------------------------------------- generation
def test_generation_with_images_batched_left_padded_matches_reference_greedy(pair, small_batch):
    """Our generate (KV cache, images at prefill only) equals greedy decoding by the
    reference's full forward over the growing sequences."""
    ours, ref = pair
    b, new = small_batch, 2
    out = ours.generate(b["input_ids"], b["attention_mask"], pixel_values=b["pixel_values"],
                        image_sizes=b["image_sizes"], max_new_tokens=new, eos_token_id=None)
    seq, mask = b["input_ids"], b["attention_mask"]
    with torch.no_grad():
        for _ in range(new):
            logits = ref_logits(ref, {**b, "input_ids": seq, "attention_mask": mask})
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
    assert torch.equal(out, seq)


# ----------------------------------------------------------------------------- training
def test_tiny_preset_trains_on_captions_and_its_checkpoint_reloads_and_generates(tok, tmp_path):
    """phi3-vision-tiny, encoder frozen (train the projector and the LM): a few AdamW steps on
    two test images with short captions lower the text-token loss; the checkpoint reloads with
    the same weights and generates the same continuations, batched and left-padded."""
    from phi_lib.model.phi3_vision import text_token_loss
    from phi_lib.model.phi3_vision_processor import collate

    torch.manual_seed(0)
    model = Phi3VisionForCausalLM(Phi3VisionConfig.from_preset("phi3-vision-tiny", clip_num_hidden_layers=1))
    model.freeze_image_encoder()
    clip_before = {k: v.clone() for k, v in model.model.vision_embed_tokens.img_processor.state_dict().items()}
    proj_before = model.model.vision_embed_tokens.img_projection[0].weight.clone()
    proc = Phi3VisionProcessor(tok, num_crops=1)
    good, _ = proc.encode_records([
        {"text": "<|image_1|>\nA cat.", "images": [image("chelsea.png")]},
        {"text": "<|image_1|>\nA rocket launch at dawn.", "images": [image("rocket.jpg")]}])
    b = collate([e for _, e in good], tok.pad_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    keep = 12  # the captions end the (left-padded) rows: logits of the last 12 positions only
    for _ in range(3):
        logits = model(b["input_ids"], attention_mask=b["attention_mask"], position_ids=positions(b["attention_mask"]),
                       pixel_values=b["pixel_values"], image_sizes=b["image_sizes"], logits_to_keep=keep)
        loss = text_token_loss(logits, b["input_ids"][:, -keep:], b["attention_mask"][:, -keep:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    clip_after = model.model.vision_embed_tokens.img_processor.state_dict()
    assert all(torch.equal(clip_before[k], clip_after[k]) for k in clip_before)  # frozen
    assert not torch.equal(proj_before, model.model.vision_embed_tokens.img_projection[0].weight)
    model.eval().save_pretrained(tmp_path / "ckpt")
    back = Phi3VisionForCausalLM.from_pretrained(tmp_path / "ckpt")
    prompts = proc.encode_records([{"text": "<|image_1|>\n", "images": [image("chelsea.png")]},
                                   {"text": "<|image_1|>\nA", "images": [image("rocket.jpg")]}])[0]
    g = collate([e for _, e in prompts], tok.pad_id)
    kw = dict(pixel_values=g["pixel_values"], image_sizes=g["image_sizes"], max_new_tokens=4,
              eos_token_id=None, allowed_vocab=len(tok))
    out = back.generate(g["input_ids"], g["attention_mask"], **kw)
    assert out.shape == (2, g["input_ids"].shape[1] + 4) and (out[:, -4:] >= 0).all()
    assert torch.equal(out, model.generate(g["input_ids"], g["attention_mask"], **kw))


def test_planner_flops_count_clip_per_crop_token_as_measured():
    """The planner's FLOPs of the image side equal torch's FLOP counter on a real forward of
    CLIP (eager attention, so that its matmuls are counted) and the projector, x3 for the
    backward; per text token they are spread over the sequence, not charged per token."""
    import dataclasses

    from torch.utils.flop_counter import FlopCounterMode

    from phi_lib.model.planning import PLAN_CROPS_PER_SEQUENCE, flops_per_token, vision_flops_per_sequence
    from phi_lib.model.phi3_vision import Phi3ImageEmbedding

    cfg = Phi3VisionConfig.from_preset("phi3-vision-tiny")
    emb = Phi3ImageEmbedding(cfg).eval()
    emb.img_processor.set_attn_implementation("eager")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        emb.img_processor(torch.randn(2, 3, 336, 336))  # two crops
        emb.img_projection(torch.randn(2 * cfg.image_token_count, 4 * cfg.clip_hidden_size))
    assert 3 * counter.get_total_flops() == vision_flops_per_sequence(cfg, crops=2)
    text_lm = PhiConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(PhiConfig)})
    assert flops_per_token(cfg, 4096) == pytest.approx(
        flops_per_token(text_lm, 4096) + vision_flops_per_sequence(cfg, PLAN_CROPS_PER_SEQUENCE) / 4096)
