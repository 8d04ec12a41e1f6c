"""The phi-3-vision image processor and prompt format (what Phi3VProcessor does), from PIL.

Per image (the HD transform of InternLM-XComposer2-4KHD):

    RGB (transparency over white)
    -> landscape view (portraits transposed), resized to width = s * 336, s the largest scale
       whose whole-crop tiling s x ceil(s / aspect) fits num_crops (bilinear, aspect kept)
    -> height padded with white to whole crops (centered), transposed back     (H, W) = (336 r, 336 c)
    -> to [0, 1], normalized with CLIP's mean / std                            (3, H, W)
    -> a 336 x 336 global view (bicubic) + the r * c crops in row order,
       zero crops up to 1 + num_crops                                         (1 + num_crops, 3, 336, 336)

An image takes (r * c + 1) * 144 + 1 + (r + 1) * 12 tokens (phi3_vision.image_token_counts).
In a prompt, `<|image_k|>` stands for the k-th image of its record; each text piece between
tags is tokenized with a leading `<s>` (the tokenizer's post-processor, called per piece as
Microsoft's processor does), and each tag becomes `-k` repeated that image's token count.
Records: `{"text" or "messages", "images": [paths or PIL images]}`; `encode_records` keeps the
good ones of a batch and names each bad one (missing / unreadable image, tags without images).
`encode_sft` gives a conversation's ids with labels on the assistant turns' tokens only (by
character span: each turn's content and its `<|end|>`), for stage 08's SFT.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from phi_lib.model.phi3_vision import image_token_counts

CROP = 336
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""OpenAI CLIP's normalization (preprocessor_config.json's image_mean)."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TAG = re.compile(r"<\|image_(\d+)\|>")
ImageLike = Union[str, Path, Any]  # a path, or a PIL image


class ImageRecordError(ValueError):
    """A record that cannot be encoded; the message names it."""


# ----------------------------------------------------------------------------- one image
def hd_scale(width: int, height: int, num_crops: int) -> int:
    """Crops across the long side: the largest s with s * ceil(s / aspect) <= num_crops."""
    ratio = max(width, height) / min(width, height)
    scale = 1
    while (scale + 1) * math.ceil((scale + 1) / ratio) <= num_crops:
        scale += 1
    return scale


def hd_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """(width, height) after the HD transform: the resize, then the padding to whole crops."""
    long, short = max(width, height), min(width, height)
    new_long = hd_scale(width, height, num_crops) * CROP
    new_short = int(new_long / (long / short))
    padded_short = math.ceil(new_short / CROP) * CROP
    return (new_long, padded_short) if width >= height else (padded_short, new_long)


def to_rgb(image):
    """RGB PIL image; transparent pixels over white (as transformers' convert_to_rgb)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255)), rgba).convert("RGB")


def hd_transform(image, num_crops: int):
    """The resized, white-padded RGB PIL image of whole 336 crops (size `hd_size`)."""
    from PIL import Image, ImageOps

    image = to_rgb(image)
    width, height = image.size
    portrait = width < height
    if portrait:  # work on the landscape view: pad the short side
        image = image.transpose(Image.TRANSPOSE)
        width, height = height, width
    new_w = hd_scale(width, height, num_crops) * CROP
    new_h = int(new_w / (width / height))
    image = image.resize((new_w, new_h), Image.BILINEAR)
    pad = math.ceil(new_h / CROP) * CROP - new_h
    image = ImageOps.expand(image, border=(0, pad // 2, 0, pad - pad // 2), fill=(255, 255, 255))
    return image.transpose(Image.TRANSPOSE) if portrait else image


def image_tensor(image, num_crops: int, mean=CLIP_MEAN, std=CLIP_STD) -> tuple[torch.Tensor, tuple[int, int]]:
    """((1 + num_crops, 3, 336, 336) global view + crops + zero crops, (H, W) of the HD image)."""
    import numpy as np

    hd = hd_transform(image, num_crops)
    x = torch.from_numpy(np.asarray(hd, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]   # (3, H, W)
    h, w = x.shape[1:]
    glb = F.interpolate(x[None], size=(CROP, CROP), mode="bicubic")                 # (1, 3, 336, 336)
    crops = x.reshape(3, h // CROP, CROP, w // CROP, CROP).permute(1, 3, 0, 2, 4)   # (r, c, 3, 336, 336)
    crops = crops.reshape(-1, 3, CROP, CROP)
    out = torch.zeros(1 + num_crops, 3, CROP, CROP)
    out[0], out[1:1 + len(crops)] = glb[0], crops
    return out, (h, w)


def open_image(source: ImageLike, record: str):
    """A PIL image from a path (fully decoded now, so a broken file fails here) or as given."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(source, (str, Path)):
        return source
    path = Path(source)
    if not path.is_file():
        raise ImageRecordError(f"{record}: image {str(path)!r} not found")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageRecordError(f"{record}: image {str(path)!r} is not a readable image "
                               f"({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------- prompts
@dataclass
class Encoded:
    """One record, encoded: the prompt ids (image k's positions hold -k) and its images."""

    input_ids: list[int]
    """Token ids; -k at the tokens of image k."""
    pixel_values: torch.Tensor
    """(images, 1 + num_crops, 3, 336, 336), in the order their tags appear."""
    image_sizes: torch.Tensor
    """(images, 2) height, width of each HD image."""
    num_img_tokens: list[int] = field(default_factory=list)
    """Tokens per image (same order)."""


class Phi3VisionProcessor:
    """Images + prompts -> model inputs, as Microsoft's Phi3VProcessor (tested against it)."""

    def __init__(self, tokenizer, num_crops: int = 16, image_mean=CLIP_MEAN, image_std=CLIP_STD):
        if num_crops < 1:
            raise ValueError(f"num_crops must be >= 1, got {num_crops}")
        self.tokenizer = tokenizer
        """A phi_lib.data.tokenizer.PhiTokenizer (the phi-3-vision one: `<s>` = 1)."""
        self.num_crops = num_crops
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    @classmethod
    def from_folder(cls, folder: Union[str, Path], tokenizer, **overrides: Any) -> "Phi3VisionProcessor":
        """With the settings of a `preprocessor_config.json` (num_crops, mean, std)."""
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no preprocessor_config.json")
        d = json.loads(path.read_text())
        kw = dict(num_crops=d.get("num_crops", 16), image_mean=d.get("image_mean", CLIP_MEAN),
                  image_std=d.get("image_std", CLIP_STD))
        return cls(tokenizer, **{**kw, **overrides})

    def images(self, images: Sequence[ImageLike], record: str = "images"):
        """(pixel_values (N, 1 + num_crops, 3, 336, 336), image_sizes (N, 2), token counts)."""
        tensors, sizes = [], []
        for source in images:
            x, size = image_tensor(open_image(source, record), self.num_crops, self.image_mean, self.image_std)
            tensors.append(x)
            sizes.append(size)
        pixel_values = torch.stack(tensors) if tensors else torch.zeros(0, 1 + self.num_crops, 3, CROP, CROP)
        return pixel_values, torch.tensor(sizes, dtype=torch.long).view(-1, 2), image_token_counts(sizes)

    def prompt_ids(self, text: str, num_img_tokens: Sequence[int], record: str = "prompt") -> tuple[list[int], list[int]]:
        """(ids with each `<|image_k|>` expanded to -k x image k's count, the image order used)."""
        ids, order, _ = self._expand(text, num_img_tokens, record)
        return ids, order

    def _expand(self, text: str, num_img_tokens: Sequence[int], record: str, offsets: bool = False):
        """`prompt_ids`, and with `offsets` the start in `text` of each id's characters (-1 for
        the `<s>` of each piece and for image tokens)."""
        tags = [int(k) for k in TAG.findall(text)]
        if sorted(set(tags)) != list(range(1, len(set(tags)) + 1)):
            raise ImageRecordError(f"{record}: image tags {sorted(set(tags))} must be <|image_1|> .. "
                                   f"<|image_n|> without gaps")
        if len(set(tags)) != len(num_img_tokens):
            raise ImageRecordError(f"{record}: {len(set(tags))} image tag(s) in the text but "
                                   f"{len(num_img_tokens)} image(s)")
        ids: list[int] = []
        starts: list[int] = []
        bos, pos = self.tokenizer.bos_id, 0
        for i, piece in enumerate(TAG.split(text)[::2]):  # split keeps the captured numbers
            if offsets:
                piece_ids, spans = self.tokenizer.encode_with_offsets(piece)
                starts += [-1] + [pos + a for a, _ in spans]
            else:
                piece_ids = self.tokenizer.encode(piece)
            ids += [bos] + piece_ids
            pos += len(piece)
            if i < len(tags):
                n = num_img_tokens[tags[i] - 1]
                ids += [-tags[i]] * n
                starts += [-1] * n
                pos += len(f"<|image_{tags[i]}|>")
        order = list(dict.fromkeys(tags))  # the model takes images in order of appearance
        return ids, order, starts

    def encode(self, record: dict, name: str = "record") -> Encoded:
        """One record ({"text" | "messages", "images": [...]}) -> Encoded; ImageRecordError
        naming `name` when it cannot be."""
        text = record_text(record, name)
        pixel_values, sizes, counts = self.images(record.get("images") or [], name)
        ids, order = self.prompt_ids(text, counts, name)
        return Encoded(ids, pixel_values[[k - 1 for k in order]], sizes[[k - 1 for k in order]],
                       [counts[k - 1] for k in order])

    def expand(self, record: dict, name: str = "record") -> tuple[list[int], list[int]]:
        """(ids, image order) as `encode` gives them, from the images' sizes alone (each image
        fully decoded, so a broken file fails here, but no pixel tensors): stage 03's form."""
        text = record_text(record, name)
        sizes = []
        for source in record.get("images") or []:
            width, height = hd_size(*open_image(source, name).size, self.num_crops)
            sizes.append((height, width))
        return self.prompt_ids(text, image_token_counts(sizes), name)

    def encode_sft(self, record: dict, name: str = "record") -> tuple[Encoded, list[int]]:
        """A conversation record ({"messages", "images"}) -> (Encoded, labels): labels are the
        ids of the assistant turns' tokens (content and `<|end|>`, as the training chat
        template's `{% generation %}` span) and -100 elsewhere (system and user turns, role
        headers, image tokens, the `<s>` of each piece)."""
        messages = record.get("messages")
        if not messages:
            raise ImageRecordError(f"{name}: needs `messages`")
        text, spans = conversation_text(messages)
        pixel_values, sizes, counts = self.images(record.get("images") or [], name)
        ids, order, starts = self._expand(text, counts, name, offsets=True)
        labels = [i if s >= 0 and any(a <= s < b for a, b in spans) else -100
                  for i, s in zip(ids, starts)]
        enc = Encoded(ids, pixel_values[[k - 1 for k in order]], sizes[[k - 1 for k in order]],
                      [counts[k - 1] for k in order])
        return enc, labels

    def encode_records(self, records: Sequence[dict], names: Optional[Sequence[str]] = None):
        """(encoded good records, [(index, message)] of the bad ones): nothing else is lost."""
        good, bad = [], []
        for i, record in enumerate(records):
            name = names[i] if names is not None else f"record {i}"
            try:
                good.append((i, self.encode(record, name)))
            except ImageRecordError as e:
                bad.append((i, str(e)))
        return good, bad

    def __call__(self, text: str, images: Sequence[ImageLike] = ()) -> dict[str, torch.Tensor]:
        """One prompt: input_ids (1, T), attention_mask, pixel_values, image_sizes."""
        enc = self.encode({"text": text, "images": list(images)}, "prompt")
        return collate([enc], self.tokenizer.pad_id)


def record_text(record: dict, name: str) -> str:
    """A record's text: its `text`, or its `messages` in the phi-3 chat format (the tokenizer's
    chat template; a generation prompt after a last user turn)."""
    if "text" in record:
        return record["text"]
    messages = record.get("messages")
    if not messages:
        raise ImageRecordError(f"{name}: needs `text` or `messages`")
    return conversation_text(messages)[0]


def conversation_text(messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """(messages in the phi-3 chat format, a generation prompt after a last user turn; the
    character span of each assistant turn's content and its `<|end|>`)."""
    out, spans = "", []
    for m in messages:
        out += f"<|{m['role']}|>\n"
        start = len(out)
        out += f"{m['content']}<|end|>"
        if m["role"] == "assistant":
            spans.append((start, len(out)))
        out += "\n"
    return out + ("<|assistant|>\n" if messages[-1]["role"] != "assistant" else ""), spans


def collate(encoded: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch: input_ids / attention_mask (B, T), all images in row order."""
    from phi_lib.model.generate import left_pad

    ids, mask = left_pad([e.input_ids for e in encoded], pad_id)
    return {"input_ids": ids, "attention_mask": mask,
            "pixel_values": torch.cat([e.pixel_values for e in encoded]),
            "image_sizes": torch.cat([e.image_sizes for e in encoded])}
