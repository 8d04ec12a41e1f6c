"""phi-3-vision on CPU: processor images/s, encoder images/s, and where one captioning request
spends its time (image encoder vs language model).

- processor: `Phi3VisionProcessor` on the data folder's five test images at the default
  num_crops (16): decode, HD transform, normalize, crops; images/s over `--rounds` passes.
- encoder and language model at the published shapes, random weights, fp32: the full models
  do not fit this machine's time (a 16-crop image is ~6 TFLOP through CLIP, a 2.5K-token
  prefill ~20 TFLOP through phi-3-mini), so each is built with `--layers` of its layers (CLIP
  width 1024, phi-3-mini width 3072, LM head 32,064) and the measured per-layer time is scaled
  to 24 CLIP and 32 LM layers (their layers are identical, so time is linear in the count).
  The request: one image of 17 crops (retina.jpg at 16 crops: 2,524 image tokens) + a short
  question, prefill, then `--new` greedy tokens with the KV cache.

    python perf/phi3_vision_cpu.py                 # prints a markdown table
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from phi_lib.data.tokenizer import load_tokenizer
from phi_lib.model.model import PhiForCausalLM
from phi_lib.model.phi3_vision import Phi3VisionConfig, Phi3VisionForCausalLM
from phi_lib.model.phi3_vision_processor import Phi3VisionProcessor
from phi_lib.paths import data_path

IMAGES = ("chelsea.png", "rocket.jpg", "retina.jpg", "camera.png", "text.png")


def timed(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--layers", type=int, default=1, help="layers built of CLIP and of the LM (scaled up)")
    ap.add_argument("--new", type=int, default=8, help="new tokens of the captioning request")
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = load_tokenizer("phi-3-vision")
    proc = Phi3VisionProcessor(tok)  # num_crops 16, as preprocessor_config.json
    paths = [str(data_path("images") / n) for n in IMAGES]

    per_pass = timed(lambda: proc.images(paths), args.rounds)
    print(f"| processor (16 crops, 5 test images) | {len(paths) / per_pass:.1f} images/s |")

    full = Phi3VisionConfig.from_preset("phi-3-vision")
    cfg = full.replace(num_hidden_layers=args.layers, clip_num_hidden_layers=args.layers)
    model = Phi3VisionForCausalLM(cfg).eval()
    request = proc("<|user|>\n<|image_1|>\nDescribe this image.<|end|>\n<|assistant|>\n",
                   [str(data_path("images") / "retina.jpg")])
    pv, sizes, ids = request["pixel_values"], request["image_sizes"], request["input_ids"]
    emb = model.model.vision_embed_tokens
    crops = 1 + int((sizes[0, 0] // 336) * (sizes[0, 1] // 336))
    with torch.inference_mode():
        enc = timed(lambda: emb.encode(pv[0, :crops]), args.rounds)
        feats = emb.hd_transform(pv, sizes)[0]
        proj = timed(lambda: emb.img_projection(feats), args.rounds)
        embeds = emb(ids, pv, sizes, model.model.embed_tokens)
        # the LM alone on the spliced embeddings: prefill, then decode steps with the cache
        def prefill():
            cache = model.new_cache()
            PhiForCausalLM.forward(model, ids.clamp(min=0), cache=cache, logits_to_keep=1, inputs_embeds=embeds)
            return cache
        pre = timed(prefill, args.rounds)
        cache = prefill()
        token = torch.tensor([[450]])
        t = time.perf_counter()
        for _ in range(args.new):
            model(token, cache=cache)
        step = (time.perf_counter() - t) / args.new
        last = embeds[:, -1:]
        head = timed(lambda: model.lm_head(model.model.norm(last)), args.rounds)
    clip_s = enc / args.layers * full.clip_num_hidden_layers
    # the layers' share scaled to 32; the LM head (one position) counted once
    lm_pre = (pre - head) / args.layers * full.num_hidden_layers + head
    lm_step = (step - head) / args.layers * full.num_hidden_layers + head
    print(f"| encoder, one 17-crop image (CLIP ViT-L/14-336, scaled from {args.layers} layer(s)) | "
          f"{clip_s:.1f} s ({1 / clip_s:.3f} images/s) |")
    print(f"| projector (2,524 x 4096 -> 3072) | {proj:.2f} s |")
    print(f"| LM prefill, {ids.shape[1]} tokens (phi-3-mini, scaled from {args.layers} layer(s)) | {lm_pre:.1f} s |")
    print(f"| LM decode, per token (KV cache) | {lm_step:.2f} s |")
    total = clip_s + proj + lm_pre + args.new * lm_step
    print(f"| one request ({args.new} new tokens): encoder {clip_s / total:.0%}, "
          f"LM prefill {lm_pre / total:.0%}, decode {args.new * lm_step / total:.0%} | {total:.0f} s |")


if __name__ == "__main__":
    main()
