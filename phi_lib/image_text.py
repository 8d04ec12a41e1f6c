"""The image-text set stage 03 writes for phi-3-vision and stage 05 reads (as phi_lib/packed.py
is for the packed windows): `03_mix/image_text/`

    train.jsonl, val.jsonl   one record a line: {"record": "file:line", "input_ids": [...],
                             "images": [paths]}; -k ids at the tokens of the record's image k
                             (already expanded by stage 03, EOS appended)
    index.json               tokenizer, num_crops, seq_len, pad_id, vocab_size, weight, counts,
                             drops and the dropped records, the stage's data fingerprint

Stage 05 streams the records (read by byte offset when batched): each micro-batch's images
through the processor, the ids left-padded (ImageTextDataset, PackedDataset's batching
interface), a `weight` share of the micro-batches, the rest packed text windows (MixedStream).
Writer: phi_lib/data/image_text.py.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from phi_lib.io import read_json

if TYPE_CHECKING:
    import torch

IMAGE_TEXT_DIR = "image_text"
INDEX = "index.json"


def absolute_images(images: list, folder: Path) -> list[str]:
    """A record's image paths, relative ones taken from the record file's folder (stages 03 and
    08 read them so)."""
    return [str(p if Path(p).is_absolute() else Path(folder) / p) for p in images]


def drop_reason(message: str) -> str:
    """The drop reason of an ImageRecordError's message."""
    if "not found" in message:
        return "missing_image"
    if "not a readable image" in message:
        return "unreadable_image"
    return "bad_image_tags"


@dataclass
class ImageTextBatch:
    """One micro-batch: the records' ids left-padded, all their images in row order."""

    input_ids: torch.Tensor       # (B, T), -k at the tokens of its record's image k
    attention_mask: torch.Tensor  # (B, T)
    pixel_values: torch.Tensor    # (images, 1 + num_crops, 3, 336, 336), in row order
    image_sizes: torch.Tensor     # (images, 2)

    def to(self, device, non_blocking: bool = False) -> "ImageTextBatch":
        return ImageTextBatch(*(t.to(device, non_blocking=non_blocking) for t in
                                (self.input_ids, self.attention_mask, self.pixel_values, self.image_sizes)))

    def numel(self) -> int:
        """Tokens in the batch (padding left out)."""
        return int(self.attention_mask.sum())

    def loss(self, forward) -> torch.Tensor:
        """Next-token loss on the text tokens (image tokens and padding are no targets)."""
        from phi_lib.model.phi3_vision import text_token_loss

        positions = (self.attention_mask.cumsum(-1) - 1).clamp(min=0)
        # logits only from the first position with a text target on (a caption after its image
        # needs a few of the 32K-wide rows, not one per image token); the same loss
        has_target = (self.input_ids[:, 1:] >= 0) & self.attention_mask[:, 1:].bool()   # (B, T-1)
        first = int(has_target.any(0).float().argmax())
        keep = self.input_ids.shape[1] - first
        logits = forward(self.input_ids, attention_mask=self.attention_mask, position_ids=positions,
                         pixel_values=self.pixel_values, image_sizes=self.image_sizes,
                         logits_to_keep=keep)
        return text_token_loss(logits, self.input_ids[:, -keep:], self.attention_mask[:, -keep:])


def line_offsets(path: Path) -> list[int]:
    """Byte offset of each non-empty line of a .jsonl file."""
    offsets, pos = [], 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                offsets.append(pos)
            pos += len(line)
    return offsets


class ImageTextDataset:
    """A split of `03_mix/image_text/` with PackedDataset's batching interface."""

    def __init__(self, mix_dir: Path, split: str):
        self.mix_dir, self.folder = Path(mix_dir), Path(mix_dir) / IMAGE_TEXT_DIR
        self.index = read_json(self.folder / INDEX)
        self.mix = self.index  # check_packed_data reads `tokenizer` and `vocab_size`
        self.path = self.folder / f"{split}.jsonl"
        self.offsets = line_offsets(self.path)  # records are read when batched, not held
        if not self.offsets:
            raise FileNotFoundError(f"{self.path}: no {split} records")
        self.seq_len = self.index["seq_len"]
        self._processor = None

    def __len__(self) -> int:
        return len(self.offsets)

    def record(self, i: int) -> dict:
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            return json.loads(f.readline())

    @property
    def processor(self):
        if self._processor is None:
            from phi_lib.model.phi3_vision_processor import Phi3VisionProcessor

            self._processor = Phi3VisionProcessor(None, num_crops=self.index["num_crops"])
        return self._processor

    def batch(self, records: list[dict]) -> ImageTextBatch:
        import torch

        from phi_lib.model.generate import left_pad

        ids, mask = left_pad([r["input_ids"] for r in records], self.index["pad_id"])
        pixels, sizes = [], []
        for r in records:
            pv, sz, _ = self.processor.images(r["images"], r["record"])
            pixels.append(pv)
            sizes.append(sz)
        return ImageTextBatch(ids, mask, torch.cat(pixels), torch.cat(sizes))

    def iter_batches(self, micro_batch_size: int, rank: int = 0, world: int = 1,
                     start_sample: int = 0, seed: int = 0) -> Iterator[tuple[ImageTextBatch, int]]:
        """(batch, samples consumed) forever. The stream is the records in a seeded permutation
        per epoch, end to end; rank r takes the r-th micro-batch of each `world` of them, so a
        resume at `start_sample` (global records consumed) continues it exactly."""
        import torch

        n, sample = len(self), start_sample
        perms: dict[int, list[int]] = {}

        def record(position: int) -> dict:
            epoch, i = divmod(position, n)
            if epoch not in perms:
                perms.clear()  # at most the two epochs a batch can straddle
                perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            return self.record(perms[epoch][i])

        while True:
            first = sample + rank * micro_batch_size
            batch = [record(p) for p in range(first, first + micro_batch_size)]
            sample += micro_batch_size * world
            yield self.batch(batch), sample


class MixedStream:
    """Training micro-batches from the image-text records (a `weight` share) and the packed
    text windows (the rest): micro-batch round r is an image-text one iff a hash of (seed, r)
    falls under `weight`, so the counts of each kind before any round, and with them a resume
    from `start_sample`, follow from the round alone. Samples count sequences of both kinds."""

    def __init__(self, images: ImageTextDataset, text, weight: float):
        self.images, self.text, self.weight = images, text, weight
        self.mix, self.mix_dir, self.seq_len = images.mix, images.mix_dir, images.seq_len

    def __len__(self) -> int:
        return len(self.images) + len(self.text)

    def is_image_round(self, seed: int, r: int) -> bool:
        h = hashlib.sha256(f"{seed}:{r}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64 < self.weight

    def iter_batches(self, micro_batch_size: int, rank: int = 0, world: int = 1,
                     start_sample: int = 0, seed: int = 0):
        step = micro_batch_size * world
        r = start_sample // step
        n_image = sum(self.is_image_round(seed, i) for i in range(r))
        images = self.images.iter_batches(micro_batch_size, rank, world, n_image * step, seed)
        text = self.text.iter_batches(micro_batch_size, rank, world, (r - n_image) * step, seed)
        while True:
            batch, _ = next(images if self.is_image_round(seed, r) else text)
            r += 1
            yield batch, r * step


def open_split(mix_dir: Path, split: str):
    """Stage 05's reader of a phi-3-vision mixture split: the image-text records, mixed with
    the packed text windows for training when `weight` < 1."""
    images = ImageTextDataset(mix_dir, split)
    if split == "train" and images.index.get("weight", 1.0) < 1:
        from phi_lib.packed import PackedDataset

        return MixedStream(images, PackedDataset(mix_dir, "train"), images.index["weight"])
    return images
