"""Stage 03's image-text set for phi-3-vision (`mix.image_text`); the format and stage 05's
reader are the top-level phi_lib/image_text.py (stages share files, not packages).

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
from pathlib import Path
from typing import Iterator, Optional

from phi_lib.image_text import IMAGE_TEXT_DIR, INDEX, absolute_images, drop_reason
from phi_lib.io import atomic_open, atomic_write_json, read_json
from phi_lib.provenance import digest, path_digest

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
                rec["images"] = absolute_images(rec.get("images") or [], path.parent)
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


def _is_val(rec: dict, seed: int, fraction: float) -> bool:
    """The seeded draw on a record's content; its images by file name, so the split does not
    depend on where the data folder lies."""
    key = json.dumps({**rec, "images": [Path(p).name for p in rec["images"]]}, sort_keys=True)
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
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
            for name, rec, _ in read_records(path):
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
                        reason, why = drop_reason(str(e)), str(e)
                if reason is not None:
                    drops[reason] += 1
                    dropped.append({"record": name, "reason": reason, "message": why})
                    continue
                split = "val" if _is_val(rec, seed, frac) else "train"
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
