"""Stage 03's image-text set for phi-3-vision (`mix.image_text`), and stage 05's reader of it.

    records (.jsonl: {"text" or "messages", "images": [paths]})
    -> each `<|image_k|>` expanded to image k's token count (-k ids), images checked readable
       (Phi3VisionProcessor.expand: sizes only, no pixels), EOS appended        stage 03
    -> 03_mix/image_text/{train,val}.jsonl: {"record", "input_ids", "images"} + index.json
    -> micro-batches: the images through the processor, left-padded          stage 05
       (ImageTextDataset.iter_batches, the PackedDataset interface), a seeded
       `mix.image_text.weight` share of them, the rest packed text windows (MixedStream)

Streamed, not packed: a record is one training sequence (an image cut at a window edge would
be meaningless), padded to the longest of its micro-batch. A record that cannot be used is a
counted drop naming it (`file:line`): invalid JSON, a missing or unreadable image, image tags
that do not match its images, or more tokens than `mix.seq_len`. The validation split is a
seeded draw on each record's content (as the text sources'), `mix.val_fraction` of them.
`index.json` carries the stage's data fingerprint, which covers the records' files and
every image they name (`content_key`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from phi_lib.io import atomic_open, atomic_write_json, read_json
from phi_lib.provenance import digest, path_digest

IMAGE_TEXT_DIR = "image_text"
INDEX = "index.json"
if TYPE_CHECKING:
    import torch

DROP_REASONS = ("corrupt_record", "missing_image", "unreadable_image", "bad_image_tags", "too_long")


def source_paths(cfg) -> list[Path]:
    """`mix.image_text.sources` as files (relative to the data folder unless absolute)."""
    from phi_lib.paths import data_dir

    root = data_dir(cfg.run.data_dir)
    out = []
    for i, s in enumerate(cfg.mix.image_text.sources):
        path = Path(s) if Path(s).is_absolute() or root is None else root / s
        if not path.is_file():
            raise FileNotFoundError(f"mix.image_text.sources.{i}: {path} is not a file")
        out.append(path)
    return out


def read_records(path: Path) -> Iterator[tuple[str, Optional[dict], str]]:
    """(name `file:line`, record or None, the line) of each non-empty line, image paths made
    absolute (relative to the file's folder)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            name = f"{path.name}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if isinstance(rec, dict) and isinstance(rec.get("images", []), list):
                rec["images"] = [str(p if Path(p).is_absolute() else path.parent / p)
                                 for p in rec.get("images") or []]
            else:
                rec = None
            yield name, rec, line


def content_key(cfg) -> str:
    """Digest of the records' files and of every image they name (a changed image can change
    its token count): part of stage 03's data fingerprint."""
    parts = {}
    for path in source_paths(cfg):
        images = sorted({p for _, rec, _ in read_records(path) if rec for p in rec["images"]})
        parts[str(path)] = {"file": path_digest(path), "images": {p: path_digest(p) for p in images}}
    return digest(parts)


def _drop_reason(message: str) -> str:
    if "not found" in message:
        return "missing_image"
    if "not a readable image" in message:
        return "unreadable_image"
    return "bad_image_tags"


def _is_val(line: str, seed: int, fraction: float) -> bool:
    h = hashlib.sha256(f"{seed}:{line.strip()}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def build_image_text(cfg, out: Path, fingerprint: dict) -> dict:
    """Write `out/image_text/` (train.jsonl, val.jsonl, then index.json); its index."""
    from phi_lib.data.tokenizer import load_tokenizer
    from phi_lib.model.phi3_vision_processor import ImageRecordError, Phi3VisionProcessor

    folder = Path(out) / IMAGE_TEXT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX).unlink(missing_ok=True)  # complete only once rewritten
    tok = load_tokenizer(cfg.model.tokenizer, data_dir=cfg.run.data_dir)
    proc = Phi3VisionProcessor(tok, num_crops=cfg.mix.image_text.num_crops)
    seq_len, seed, frac = cfg.mix.seq_len, cfg.run.seed, cfg.mix.val_fraction
    counts = {"records": 0, "train": 0, "val": 0, "train_tokens": 0, "val_tokens": 0, "images": 0}
    drops = {r: 0 for r in DROP_REASONS}
    dropped: list[dict] = []
    with atomic_open(folder / "train.jsonl") as train, atomic_open(folder / "val.jsonl") as val:
        for path in source_paths(cfg):
            for name, rec, line in read_records(path):
                counts["records"] += 1
                if rec is None:
                    reason, why = "corrupt_record", f"{name}: not a JSON object with an `images` list"
                else:
                    try:
                        ids, order = proc.expand(rec, name)
                        ids = ids + [tok.eos_id]  # as every text document: the model learns to stop
                        reason = "too_long" if len(ids) > seq_len else None
                        why = f"{name}: {len(ids)} tokens > mix.seq_len={seq_len}"
                    except ImageRecordError as e:
                        reason, why = _drop_reason(str(e)), str(e)
                if reason is not None:
                    drops[reason] += 1
                    dropped.append({"record": name, "reason": reason, "message": why})
                    continue
                split = "val" if _is_val(line, seed, frac) else "train"
                (val if split == "val" else train).write(json.dumps(
                    {"record": name, "input_ids": ids, "images": [rec["images"][k - 1] for k in order]}) + "\n")
                counts[split] += 1
                counts[f"{split}_tokens"] += len(ids)
                counts["images"] += len(order)
    index = {"tokenizer": cfg.model.tokenizer, "num_crops": proc.num_crops, "seq_len": seq_len,
             "weight": cfg.mix.image_text.weight,
             "pad_id": tok.pad_id, "vocab_size": len(tok), "counts": counts, "drops": drops,
             "dropped": dropped, "fingerprint": fingerprint}
    atomic_write_json(folder / INDEX, index)
    return index


def is_current(out: Path, key: str) -> bool:
    """Whether `out/image_text/` is complete and carries fingerprint `key`."""
    try:
        index = read_json(Path(out) / IMAGE_TEXT_DIR / INDEX)
    except (OSError, ValueError):
        return False
    return (index.get("fingerprint") or {}).get("key") == key


# ----------------------------------------------------------------------------- stage 05
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


class ImageTextDataset:
    """A split of `03_mix/image_text/` with PackedDataset's batching interface."""

    def __init__(self, mix_dir: Path, split: str):
        self.mix_dir, self.folder = Path(mix_dir), Path(mix_dir) / IMAGE_TEXT_DIR
        self.index = read_json(self.folder / INDEX)
        self.mix = self.index  # check_packed_data reads `tokenizer` and `vocab_size`
        path = self.folder / f"{split}.jsonl"
        self.records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not self.records:
            raise FileNotFoundError(f"{path}: no {split} records")
        self.seq_len = self.index["seq_len"]
        self._processor = None

    def __len__(self) -> int:
        return len(self.records)

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

        n, sample = len(self.records), start_sample
        perms: dict[int, list[int]] = {}

        def record(position: int) -> dict:
            epoch, i = divmod(position, n)
            if epoch not in perms:
                perms.clear()  # at most the two epochs a batch can straddle
                perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            return self.records[perms[epoch][i]]

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
