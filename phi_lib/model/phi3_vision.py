"""Phi-3-vision (4.2B) in one file, with the published checkpoint's parameter names.

    image -> CLIP ViT-L/14-336 (every crop, second-to-last layer, no CLS)     (crops, 576, 1024)
          -> HD transform: 2x2 patch merge, crops tiled back into the image,
             a learned separator `sub_GN` after every row, `glb_GN` between
             the tiled crops and the global view                              (tokens, 4096)
          -> projector MLP (4096 -> 3072 -> GELU -> 3072)                     (tokens, 3072)
    prompt ids, image positions (negative ids) -> those rows of the text embedding replaced
          -> the phi-3-mini-128k language model (model.py + phi3.py)          (B, T, vocab)

The encoder is transformers' `CLIPVisionModel` (not a ViT of ours). The image processor that
makes `pixel_values` / `image_sizes` and writes `-k` at the positions of image k is
phi_lib/data/phi3_vision_processor.py. Names: `model.vision_embed_tokens.img_processor.*`
(CLIP), `.glb_GN`, `.sub_GN`, `.img_projection.{0,2}.*`, and the text model's names as
Phi3ForCausalLM. Microsoft's module also registers the shared text embedding again as
`vision_embed_tokens.wte`; the published safetensors hold it once (`model.embed_tokens`), and
so do we. tests/test_phi3_vision.py checks features, projections and logits against
Microsoft's reference implementation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from phi_lib.model.config import PhiConfig
from phi_lib.model.model import PhiForCausalLM

MODEL_TYPE = "phi3_v"
CLIP_OURS = "model.vision_embed_tokens.img_processor."
CLIP_PUBLISHED = "model.vision_embed_tokens.img_processor.vision_model."
"""transformers 4.x's CLIPVisionModel (which the checkpoint was saved with) kept its layers
under `vision_model.`; transformers 5 dropped that level (and renames on its own loads)."""
WTE_DUPLICATE = "model.vision_embed_tokens.wte.weight"
CLIP_NAME = "openai/clip-vit-large-patch14-336"
"""The only image encoder of the published model (its config.json names it; weights come with
the checkpoint)."""


@dataclass
class Phi3VisionConfig(PhiConfig):
    """The phi-3 language model (PhiConfig's fields) plus the image encoder, HD transform and
    projector (config.json's `img_processor` and `embd_layer`)."""

    clip_hidden_size: int = 1024
    """CLIP width (ViT-L: 1024); the HD transform merges 2x2 patches into 4 x this."""
    clip_intermediate_size: int = 4096
    """CLIP MLP width."""
    clip_num_hidden_layers: int = 24
    """CLIP transformer layers."""
    clip_num_attention_heads: int = 16
    """CLIP attention heads."""
    clip_image_size: int = 336
    """Crop side in pixels (the processor tiles images into crops of this size)."""
    clip_patch_size: int = 14
    """CLIP patch side: 336 / 14 = a 24 x 24 grid, 12 x 12 after the 2x2 merge."""
    clip_layer_idx: int = -2
    """Hidden state the features come from (-2: the second-to-last layer's output)."""
    hd_transform_order: str = "sub_glb"
    """`sub_glb`: the tiled crops, then glb_GN, then the global view (published); `glb_sub`."""
    image_token_count: int = 144
    """Tokens per crop after the merge (12 x 12; config.json's `num_img_tokens`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.arch != "phi3":
            raise ValueError(f"phi-3-vision needs the phi3 language model, not arch={self.arch!r}")
        if self.hd_transform_order not in ("sub_glb", "glb_sub"):
            raise ValueError(f"hd_transform_order: unknown {self.hd_transform_order!r} "
                             "(sub_glb or glb_sub)")
        grid = self.clip_image_size // self.clip_patch_size
        if self.clip_image_size % self.clip_patch_size or grid % 2:
            raise ValueError(f"clip_image_size={self.clip_image_size} / clip_patch_size="
                             f"{self.clip_patch_size} must be a whole, even patch grid")
        if self.image_token_count != (grid // 2) ** 2:
            raise ValueError(f"image_token_count={self.image_token_count} != (grid / 2)^2 = "
                             f"{(grid // 2) ** 2} of a {grid} x {grid} patch grid")

    @property
    def merged_grid(self) -> int:
        """Side of one crop's feature map after the 2x2 merge (12)."""
        return self.clip_image_size // self.clip_patch_size // 2

    def clip_config(self):
        """transformers' CLIPVisionConfig of the encoder (ViT-L/14-336 by default)."""
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(
            hidden_size=self.clip_hidden_size, intermediate_size=self.clip_intermediate_size,
            num_hidden_layers=self.clip_num_hidden_layers,
            num_attention_heads=self.clip_num_attention_heads, image_size=self.clip_image_size,
            patch_size=self.clip_patch_size, hidden_act="quick_gelu", layer_norm_eps=1e-5,
            attention_dropout=0.0, dropout=0.0, projection_dim=768, num_channels=3)

    # ------------------------------------------------------------------ config.json
    _CLIP_DEFAULTS = dict(clip_hidden_size=1024, clip_intermediate_size=4096, clip_num_hidden_layers=24,
                          clip_num_attention_heads=16, clip_image_size=336, clip_patch_size=14)

    def to_hf_dict(self) -> dict[str, Any]:
        """Phi3VForCausalLM's config.json: the text fields, `embd_layer`, `img_processor`.
        The encoder's shape goes under `img_processor.clip` only when it is not ViT-L/14-336
        (our tiny presets; the published file names the model instead)."""
        d = super().to_hf_dict()
        d.update(architectures=["Phi3VForCausalLM"], model_type=MODEL_TYPE)
        if "rope_scaling" in d:
            d["rope_scaling"]["type"] = "su"  # the name Microsoft's code reads
        d["embd_layer"] = {"embedding_cls": "image", "hd_transform_order": self.hd_transform_order,
                           "projection_cls": "mlp", "use_hd_transform": True,
                           "with_learnable_separator": True}
        d["img_processor"] = {"name": "clip_vision_model", "model_name": CLIP_NAME,
                              "image_dim_out": self.clip_hidden_size,
                              "num_img_tokens": self.image_token_count, "layer_idx": self.clip_layer_idx}
        clip = {k: getattr(self, k) for k in self._CLIP_DEFAULTS}
        if clip != self._CLIP_DEFAULTS:
            d["img_processor"]["clip"] = {k[len("clip_"):]: v for k, v in clip.items()}
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> "Phi3VisionConfig":
        """Read a `phi3_v` config.json (the published one or ours)."""
        if d.get("model_type") != MODEL_TYPE:
            raise ValueError(f"config.json: model_type {d.get('model_type')!r} is not {MODEL_TYPE!r}")
        embd, img = d.get("embd_layer") or {}, d.get("img_processor") or {}
        for key, want in (("embedding_cls", "image"), ("projection_cls", "mlp"),
                          ("use_hd_transform", True), ("with_learnable_separator", True)):
            if embd.get(key) != want:
                raise NotImplementedError(f"config.json: embd_layer.{key}={embd.get(key)!r}; only "
                                          f"{want!r} (the published phi-3-vision) is implemented")
        if img.get("name") != "clip_vision_model" or img.get("model_name") != CLIP_NAME:
            raise NotImplementedError(f"config.json: img_processor {img.get('name')!r} / "
                                      f"{img.get('model_name')!r}; only {CLIP_NAME} is implemented")
        text = PhiConfig.from_hf_dict({**d, "model_type": "phi3"})
        kw = {f.name: getattr(text, f.name) for f in dataclasses.fields(PhiConfig)}
        kw.update({f"clip_{k}": v for k, v in (img.get("clip") or {}).items()})
        if "image_dim_out" in img:
            kw["clip_hidden_size"] = img["image_dim_out"]
        kw.update(image_token_count=img.get("num_img_tokens", 144),
                  clip_layer_idx=img.get("layer_idx", -2),
                  hd_transform_order=embd.get("hd_transform_order", "glb_sub"))
        return cls(**{**kw, **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "Phi3VisionConfig":
        """A `VISION_PRESETS` architecture (phi_lib/model/config.py) with field overrides."""
        from phi_lib.model.config import VISION_PRESETS

        if name not in VISION_PRESETS:
            raise ValueError(f"unknown phi-3-vision preset {name!r} (known: {', '.join(VISION_PRESETS)})")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = [k for k in overrides if k not in fields]
        if bad:
            raise ValueError(f"unknown Phi3VisionConfig field(s) {bad}; fields are {sorted(fields)}")
        return cls(**{**VISION_PRESETS[name], "name": name, **overrides})


# ----------------------------------------------------------------------------- image embedding
def merge_2x2(features: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, grid*grid, C) patch features -> (N, grid/2, grid/2, 4C): each 2x2 block of patches
    in one vector, channels ordered (row in block, column in block, C)."""
    n, _, c = features.shape
    g = grid // 2
    x = features.reshape(n, g, 2, g, 2, c).permute(0, 1, 3, 2, 4, 5)  # (N, g, g, 2, 2, C)
    return x.reshape(n, g, g, 4 * c)


class Phi3ImageEmbedding(nn.Module):
    """CLIP encoder, HD transform with learned separators, projector (`vision_embed_tokens`)."""

    def __init__(self, config: Phi3VisionConfig):
        super().__init__()
        from transformers import CLIPVisionModel

        self.config = config
        dim = 4 * config.clip_hidden_size  # after the 2x2 merge
        self.img_processor = CLIPVisionModel(config.clip_config())
        # separators: after every row of 12 merged patches (sub_GN), between the tiled crops
        # and the global view (glb_GN); zeros at init as the reference
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, dim))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.img_projection = nn.Sequential(nn.Linear(dim, config.hidden_size), nn.GELU(),
                                            nn.Linear(config.hidden_size, config.hidden_size))
        self.drop = nn.Dropout(config.embd_pdrop)

    def encode(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, 336, 336) crops -> (N, 576, 1024): CLIP's second-to-last layer, CLS dropped."""
        out = self.img_processor(crops, output_hidden_states=True)
        return out.hidden_states[self.config.clip_layer_idx][:, 1:]

    def hd_transform(self, pixel_values: torch.Tensor, image_sizes) -> list[torch.Tensor]:
        """Per image (tokens_i, 4096): the crops' merged features laid out as the padded image,
        a sub_GN after each row, then glb_GN and the global view (also row-separated).

        pixel_values: (N, 1 + max_crops, 3, S, S), the global view first, unused crops zero.
        image_sizes:  (N, 2) height, width of the padded HD image (whole crops).
        """
        cfg = self.config
        s, g = cfg.clip_image_size, cfg.merged_grid
        n, slots = pixel_values.shape[:2]
        grid = cfg.clip_image_size // cfg.clip_patch_size
        sizes = [(int(h) // s, int(w) // s) for h, w in torch.as_tensor(image_sizes).view(-1, 2).tolist()]
        if len(sizes) != n:
            raise ValueError(f"{len(sizes)} image_sizes for {n} images of pixel_values")
        # encode only the crops in use (the processor pads every image to 1 + num_crops)
        used = [pixel_values[i, :1 + rows * cols] for i, (rows, cols) in enumerate(sizes)]
        if any(1 + rows * cols > slots for rows, cols in sizes):
            raise ValueError(f"image_sizes {sizes} need more than the {slots - 1} crops of pixel_values")
        feats = merge_2x2(self.encode(torch.cat(used)), grid)  # (sum crops, g, g, 4C)
        out, start = [], 0
        for rows, cols in sizes:
            glb, sub = feats[start], feats[start + 1:start + 1 + rows * cols]
            start += 1 + rows * cols
            # crops back in place: (rows, cols, g, g, 4C) -> (rows*g, cols*g, 4C)
            sub = sub.reshape(rows, cols, g, g, -1).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, -1)
            sub = self._with_row_separators(sub)                 # (rows*g * (cols*g + 1), 4C)
            glb = self._with_row_separators(glb)                 # (g * (g + 1), 4C)
            sep = self.glb_GN.reshape(1, -1)
            parts = (sub, sep, glb) if cfg.hd_transform_order == "sub_glb" else (glb, sep, sub)
            out.append(torch.cat(parts))
        return out

    def _with_row_separators(self, x: torch.Tensor) -> torch.Tensor:
        """(H, W, 4C) -> (H * (W + 1), 4C): sub_GN appended to every row (the reference uses
        sub_GN for the global view's rows too)."""
        sep = self.sub_GN.reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        return torch.cat([x, sep.to(x.dtype)], dim=1).reshape(-1, x.shape[-1])

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_sizes,
                embed_tokens: nn.Embedding) -> torch.Tensor:
        """(B, T, hidden): text embeddings, the rows of image tokens (ids < 0) replaced by the
        projected image features, images taken in the order their tokens appear (row by row)."""
        feats = [self.img_projection(f.to(self.img_projection[0].weight.dtype))
                 for f in self.hd_transform(pixel_values, image_sizes)]
        feats = torch.cat(feats)                                  # (image tokens, hidden)
        is_image = input_ids < 0
        if int(is_image.sum()) != feats.shape[0]:
            raise ValueError(f"the prompts hold {int(is_image.sum())} image tokens; the images give "
                             f"{feats.shape[0]} (the processor writes each image's count)")
        x = embed_tokens(input_ids.clamp(min=0))
        x = x.masked_scatter(is_image[..., None], feats.to(x.dtype))
        return self.drop(x)


# ----------------------------------------------------------------------------- the model
class Phi3VisionForCausalLM(PhiForCausalLM):
    """phi-3-vision: `model(input_ids, pixel_values=..., image_sizes=...) -> logits (B, T, vocab)`.

    input_ids hold `-k` at the positions of image k's tokens (the processor's output); text-only
    batches need no pixel_values. Everything else (masks, positions, cache) as PhiForCausalLM.
    """

    config_class = Phi3VisionConfig

    def __init__(self, config: Phi3VisionConfig):
        super().__init__(config)
        self.model.vision_embed_tokens = Phi3ImageEmbedding(config)
        self.model.vision_embed_tokens.img_projection.apply(self._init_weights)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, document_ids: Optional[torch.Tensor] = None,
                cache=None, logits_to_keep: int = 0, pixel_values: Optional[torch.Tensor] = None,
                image_sizes=None) -> torch.Tensor:
        embeds = None
        if pixel_values is not None:
            embeds = self.model.vision_embed_tokens(input_ids, pixel_values, image_sizes,
                                                    self.model.embed_tokens)
        elif bool((input_ids < 0).any()):
            raise ValueError("input_ids hold image tokens (negative ids) but no pixel_values were given")
        return super().forward(input_ids.clamp(min=0), attention_mask, position_ids, document_ids, cache,
                               logits_to_keep, inputs_embeds=embeds)

    def image_features(self, pixel_values, image_sizes) -> list[torch.Tensor]:
        """Projected features per image, (tokens_i, hidden) (what the LM reads)."""
        emb = self.model.vision_embed_tokens
        return [emb.img_projection(f) for f in emb.hd_transform(pixel_values, image_sizes)]

    def init_buffers(self) -> None:
        """CLIP's non-persistent position ids (left on the meta device by a checkpoint load)."""
        emb = self.model.vision_embed_tokens.img_processor.embeddings
        emb.position_ids = torch.arange(emb.num_positions).expand((1, -1))

    # ------------------------------------------------------------------ checkpoint names
    @staticmethod
    def to_checkpoint_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our state dict -> the published names (CLIP under `img_processor.vision_model.`)."""
        return {k.replace(CLIP_OURS, CLIP_PUBLISHED, 1) if k.startswith(CLIP_OURS) else k: v
                for k, v in state.items()}

    @staticmethod
    def from_checkpoint_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Published (or Microsoft's module's) names -> ours: CLIP without `vision_model.`
        (transformers 5's CLIPVisionModel), the duplicate `vision_embed_tokens.wte` dropped
        when it is the text embedding."""
        state = dict(state)
        wte = state.pop(WTE_DUPLICATE, None)
        if wte is not None and not torch.equal(wte, state.get("model.embed_tokens.weight", wte)):
            raise ValueError(f"{WTE_DUPLICATE} differs from model.embed_tokens.weight: the reference "
                             "shares one embedding, so a checkpoint with two is not phi-3-vision's")
        return {k.replace(CLIP_PUBLISHED, CLIP_OURS, 1) if k.startswith(CLIP_PUBLISHED) else k: v
                for k, v in state.items()}

    def freeze_image_encoder(self, freeze: bool = True) -> None:
        """Stop (or restart) gradients into CLIP (the usual first stage trains the projector)."""
        for p in self.model.vision_embed_tokens.img_processor.parameters():
            p.requires_grad_(not freeze)

    def generate(self, input_ids, attention_mask=None, pixel_values=None, image_sizes=None,
                 **kwargs: Any) -> torch.Tensor:
        """`phi_lib.model.generate.generate` with this batch's images: every call whose ids hold
        image tokens (the prompt, and LongRoPE's recompute) gets them, decoding steps do not."""
        from phi_lib.model.generate import generate

        model = self if pixel_values is None else WithImages(self, pixel_values, image_sizes)
        return generate(model, input_ids, attention_mask, **kwargs)


def text_token_loss(logits: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Next-token cross entropy on the text tokens only (the report's loss): targets that are
    image tokens (ids < 0) or padding are left out. logits (B, T, V), input_ids (B, T)."""
    import torch.nn.functional as F

    targets = input_ids[:, 1:].clone()
    keep = targets >= 0
    if attention_mask is not None:
        keep &= attention_mask[:, 1:].bool()
    targets[~keep] = -100
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100)


class WithImages:
    """A Phi3VisionForCausalLM with one batch's images bound to it, for the text generate loop."""

    def __init__(self, model: Phi3VisionForCausalLM, pixel_values: torch.Tensor, image_sizes):
        self.model = model
        self.pixel_values = pixel_values.to(model.device, model.dtype)
        self.image_sizes = image_sizes

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if bool((input_ids < 0).any()):
            kwargs.update(pixel_values=self.pixel_values, image_sizes=self.image_sizes)
        return self.model(input_ids, **kwargs)


def image_token_counts(image_sizes: Sequence[Sequence[int]], crop: int = 336, grid: int = 12) -> list[int]:
    """Tokens each image takes: (crops + 1) * grid^2 + 1 + (rows + 1) * grid (the tiled crops
    and the global view, a separator per feature row, glb_GN)."""
    counts = []
    for h, w in image_sizes:
        rows, cols = int(h) // crop, int(w) // crop
        counts.append((rows * cols + 1) * grid * grid + 1 + (rows + 1) * grid)
    return counts
