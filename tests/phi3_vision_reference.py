"""Microsoft's Phi-3-vision remote code (data folder, `references/phi-3-vision/`) as a CPU oracle.

Tests only: phi_lib never imports it. The code was written for transformers 4.38-4.40; two
things it imports are gone from transformers 5 and one it needs is not installed here:

- `transformers.modeling_attn_mask_utils._prepare_4d_causal_attention_mask` (its eager path's
  mask): a stand-in module builds the same additive (B, 1, T, past + T) mask, causal plus key
  padding, with the dtype's minimum where attention is not allowed (as 4.x did);
- `DynamicCache.from_legacy_cache`: the oracle runs with `use_cache=False` (whole prompts);
- `torchvision` (its image processor's resize / pad / to-tensor / normalize): torchvision
  cannot be installed beside the CPU torch build here, so a stand-in module implements the four
  calls as torchvision does for PIL images — `resize` is PIL's bilinear `Image.resize`
  (torchvision hands PIL images to PIL), `pad` is `ImageOps.expand` with the fill colour,
  `ToTensor` divides the uint8 HWC array by 255 into CHW float, `Normalize` is (x - mean) / std.

Everything else — the HD transform's geometry, the global view's bicubic resize, crop order,
padding to num_crops + 1, token counts, prompt splitting and placeholder expansion, the CLIP
feature layer, separators, projector, splicing and the language model — runs as Microsoft
wrote it. Its CLIP shape is a module constant (ViT-L/14-336); `reference_model` swaps in the
shrunken CLIP of the test config.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import torch

from phi_lib.paths import data_path

PACKAGE = "ms_phi3_vision"  # not this module's own name: the package replaces no module in sys.modules


def reference_dir() -> Path | None:
    return data_path("references/phi-3-vision")


# ----------------------------------------------------------------------------- stand-ins
def prepare_4d_causal_attention_mask(attention_mask, input_shape, inputs_embeds, past_key_values_length,
                                     sliding_window=None):
    """transformers 4.x's eager mask: (B, 1, T, past + T), 0 allowed, dtype min elsewhere."""
    b, t = input_shape
    total = past_key_values_length + t
    if sliding_window is not None:
        assert sliding_window >= total, "the stand-in implements no sliding window (tests are short)"
    dtype, device = inputs_embeds.dtype, inputs_embeds.device
    q = torch.arange(past_key_values_length, total, device=device)[:, None]
    allowed = (torch.arange(total, device=device)[None, :] <= q)[None, None].expand(b, 1, t, total)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].bool()
    return torch.zeros(b, 1, t, total, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


def _fake_mask_utils() -> types.ModuleType:
    mod = types.ModuleType("transformers.modeling_attn_mask_utils")
    mod._prepare_4d_causal_attention_mask = prepare_4d_causal_attention_mask
    return mod


def _fake_torchvision() -> dict[str, types.ModuleType]:
    from PIL import Image, ImageOps

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")

    def resize(img, size):
        h, w = size
        return img.resize((w, h), Image.BILINEAR)

    def pad(img, padding, fill):
        left, top, right, bottom = padding
        return ImageOps.expand(img, border=(left, top, right, bottom), fill=tuple(fill))

    class ToTensor:
        def __call__(self, pic):
            arr = np.array(pic, dtype=np.uint8, copy=True)
            return torch.from_numpy(arr).permute(2, 0, 1).contiguous().float().div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean), torch.tensor(std)

        def __call__(self, t):
            return (t - self.mean[:, None, None]) / self.std[:, None, None]

    class Compose:
        def __init__(self, steps):
            self.steps = steps

        def __call__(self, x):
            for step in self.steps:
                x = step(x)
            return x

    functional.resize, functional.pad = resize, pad
    transforms.functional, transforms.ToTensor, transforms.Normalize, transforms.Compose = (
        functional, ToTensor, Normalize, Compose)
    tv.transforms = transforms
    return {"torchvision": tv, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional}


# ----------------------------------------------------------------------------- loading
def _module(name: str):
    return sys.modules[f"{PACKAGE}.{name}"]


def load() -> types.SimpleNamespace:
    """The reference modules (configuration, image embedding, modeling, image processing,
    processing)."""
    if f"{PACKAGE}.processing_phi3_v" not in sys.modules:
        folder = reference_dir()
        if folder is None:
            raise FileNotFoundError("references/phi-3-vision is not in the data folder")
        for name in ("configuration_utils", "modeling_utils", "modeling_outputs", "cache_utils",
                     "image_processing_utils", "processing_utils"):
            importlib.import_module(f"transformers.{name}")
        fakes = {"transformers.modeling_attn_mask_utils": _fake_mask_utils(), **_fake_torchvision()}
        saved = {name: sys.modules.get(name) for name in fakes}
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(folder)]
        sys.modules[PACKAGE] = package
        sys.modules.update(fakes)
        try:
            for name in ("modeling_phi3_v", "image_processing_phi3_v", "processing_phi3_v"):
                importlib.import_module(f"{PACKAGE}.{name}")
        finally:  # nothing else may see the stand-ins
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
        _module("modeling_phi3_v").Phi3VForCausalLM._tied_weights_keys = {}  # untied (v5 spelling)
    return types.SimpleNamespace(config=_module("configuration_phi3_v"),
                                 embedding=_module("image_embedding_phi3_v"),
                                 modeling=_module("modeling_phi3_v"),
                                 image_processing=_module("image_processing_phi3_v"),
                                 processing=_module("processing_phi3_v"))


def reference_config(config):
    """The reference's Phi3VConfig of one of ours (our config.json is its input), eager attention."""
    ref = load()
    d = {k: v for k, v in config.to_hf_dict().items() if k not in ("architectures", "model_type")}
    cfg = ref.config.Phi3VConfig(**d)
    cfg._attn_implementation = "eager"
    cfg.img_processor = d["img_processor"]
    # transformers 5 rewrites rope_scaling into its rope_parameters layout; the 2024 code reads
    # the 4.x one (`type: su` + the two factor lists), as config.json has it
    cfg.rope_scaling = d.get("rope_scaling")
    cfg.rope_theta = d["rope_theta"]
    return cfg


def reference_model(config, state_dict=None):
    """The reference Phi3VForCausalLM of our config (its CLIP shrunk to ours), optionally with
    our weights (strict but for its duplicate `vision_embed_tokens.wte`)."""
    ref = load()
    ref.embedding.CLIP_VIT_LARGE_PATCH14_336_CONFIG = config.clip_config()
    model = ref.modeling.Phi3VForCausalLM(reference_config(config)).eval()
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        assert not unexpected, unexpected
        assert set(missing) <= {"model.vision_embed_tokens.wte.weight"}, missing
    return model


def reference_processor(num_crops: int, tokenizer):
    """The reference Phi3VProcessor: its image processor + `tokenizer` (a transformers one)."""
    ref = load()
    image_processor = ref.image_processing.Phi3VImageProcessor(num_crops=num_crops)
    image_processor.num_img_tokens = 144  # preprocessor_config.json's; the processor reads it
    proc = object.__new__(ref.processing.Phi3VProcessor)
    proc.image_processor, proc.tokenizer = image_processor, tokenizer
    proc.num_img_tokens = 144
    return proc
