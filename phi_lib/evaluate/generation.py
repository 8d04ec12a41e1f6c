"""Generation tasks: HumanEval, MBPP, GSM8K (via code, or few-shot chain of thought), SQuAD.

The model completes a prompt (greedy, or sampled n times for pass@k) until a stop sequence;
code tasks run the completed program only in :mod:`phi_lib.sandbox` and count it correct
if it exits cleanly (tests are asserts) or prints the right number (GSM8K via code).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from phi_lib.evaluate.metrics import exact_match, mean_stderr, parse_number, pass_at_k
from phi_lib.sandbox import DEFAULT_LEVEL, run_programs

HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
"""Codex paper's stop sequences (a base model keeps writing after the function)."""
MBPP_STOP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```"]
"""bigcode-evaluation-harness's MBPP stop sequences."""
GSM8K_CODE_STOP = ["\ndef", "\nclass", "\nif __name__", "\nprint", "\n#", "\n\n\n"]


@dataclass
class GenSpec:
    prompt: Callable[[dict], str]
    stop: list[str]
    program: Optional[Callable[[dict, str, str], str]] = None
    """(doc, prompt, completion) -> program to run; None = text-graded."""


def humaneval_program(doc: dict, prompt: str, completion: str) -> str:
    return f"{prompt}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def mbpp_prompt(doc: dict) -> str:
    """bigcode-evaluation-harness's zero-shot MBPP prompt: description + first test."""
    return f'"""\n{doc["text"]}\n{doc["test_list"][0]}\n"""\n'


def mbpp_program(doc: dict, prompt: str, completion: str) -> str:
    setup = doc.get("test_setup_code") or ""
    return f"{prompt}{completion}\n\n{setup}\n" + "\n".join(doc["test_list"]) + "\n"


def gsm8k_code_prompt(doc: dict) -> str:
    """Zero-shot "via coding" (phi-1.5's prompt is unpublished): a function whose docstring
    is the problem; the model writes the body and the program prints its return value."""
    question = doc["question"].replace('"""', "'''")
    return (f'def solution():\n    """{question}\n    Return the final numeric answer.\n'
            f'    """\n')


def gsm8k_code_program(doc: dict, prompt: str, completion: str) -> str:
    return f"{prompt}{completion}\n\nprint(solution())\n"


def gsm8k_gold(doc: dict) -> float:
    return float(doc["answer"].split("####")[-1].strip().replace(",", ""))


def gsm8k_cot_prompt(doc: dict) -> str:
    """lm-eval's `gsm8k_cot`: its 8 chain-of-thought exemplars (read from lm-eval's YAML)."""
    shots = "".join(f"Q: {s['question']}\nA: {s['target']}\n\n" for s in _cot_shots())
    return f"{shots}Q: {doc['question']}\nA:"


def _cot_shots() -> list[dict]:
    import lm_eval
    import yaml

    path = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k-cot.yaml"
    return yaml.safe_load(path.read_text())["fewshot_config"]["samples"]


def squad_prompt(doc: dict) -> str:
    return (f"Title: {doc['title']}\n\nBackground: {doc['context']}\n\n"
            f"Question: {doc['question']}\n\nAnswer:")


SPECS: dict[str, GenSpec] = {
    "humaneval": GenSpec(lambda d: d["prompt"], HUMANEVAL_STOP, humaneval_program),
    "mbpp": GenSpec(mbpp_prompt, MBPP_STOP, mbpp_program),
    "gsm8k": GenSpec(gsm8k_code_prompt, GSM8K_CODE_STOP, gsm8k_code_program),
    "gsm8k_cot": GenSpec(gsm8k_cot_prompt, ["Q:", "</s>", "<|im_end|>", "\n\n\n"]),
    "squad": GenSpec(squad_prompt, ["\n"]),
}


SANDBOX_KEY = "evaluate.sandbox_isolation"


def runs_programs(task: str, gsm8k_mode: str = "code") -> bool:
    """Whether `task` runs model-written programs in the sandbox."""
    spec = SPECS.get("gsm8k_cot" if task == "gsm8k" and gsm8k_mode == "cot" else task)
    return spec is not None and spec.program is not None


# ----------------------------------------------------------------------------- generation
def truncate_at_stop(text: str, stop: list[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, stop: list[str],
             temperature: float = 0.0, n: int = 1, batch_size: int = 8, seed: int = 1234,
             progress: bool = True) -> list[list[str]]:
    """`n` completions per prompt (raw continuation, cut before the first stop sequence).
    Batches are length-sorted and left-padded; a batch ends early once every row stopped."""
    dev = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[str]] = [[] for _ in prompts]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    per_batch = max(1, batch_size // n)
    batches = [order[s:s + per_batch] for s in range(0, len(order), per_batch)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="generate")
    try:
        for idx in batches:
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(dev)
            kwargs = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens,
                          num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                          stop_strings=stop or None, tokenizer=tokenizer)
            if temperature > 0:
                kwargs.update(temperature=temperature, top_p=0.95)
            with torch.inference_mode():
                gen = model.generate(**enc, **kwargs)
            texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:],
                                           skip_special_tokens=True)
            for j, i in enumerate(idx):
                out[i] = [truncate_at_stop(t, stop) for t in texts[j * n:(j + 1) * n]]
    finally:
        tokenizer.padding_side = old_side
    return out


# ----------------------------------------------------------------------------- evaluation
def evaluate_generation(model, tokenizer, task: str, docs: list[dict], *, gsm8k_mode="code",
                        n_samples: int = 1, pass_k=(1,), temperature: float = 0.0,
                        max_new_tokens: int = 384, batch_size: int = 8, timeout_s: float = 10.0,
                        memory_mb: int = 1024, seed: int = 1234,
                        sandbox_isolation: str = DEFAULT_LEVEL,
                        progress: bool = True) -> tuple[dict, list[dict]]:
    """(metrics, per-item samples) of a generation task."""
    key = "gsm8k_cot" if task == "gsm8k" and gsm8k_mode == "cot" else task
    spec = SPECS[key]
    n = n_samples if spec.program is not None else 1
    prompts = [spec.prompt(d) for d in docs]
    completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                           stop=spec.stop, temperature=temperature,
                           n=n, batch_size=batch_size, seed=seed, progress=progress)
    samples = []
    if spec.program is not None:
        programs = [spec.program(d, p, c) for d, p, cs in zip(docs, prompts, completions) for c in cs]
        runs = run_programs(programs, timeout_s=timeout_s, memory_mb=memory_mb, progress=progress,
                            isolation=sandbox_isolation, key=SANDBOX_KEY)
        for i, (d, p, cs) in enumerate(zip(docs, prompts, completions)):
            rs = runs[i * n:(i + 1) * n]
            if task == "gsm8k":
                gold = gsm8k_gold(d)
                ok = [r.status == "passed" and _close(parse_number(r.stdout), gold) for r in rs]
            else:
                ok = [r.status == "passed" for r in rs]
            samples.append({"doc_id": i, "task_id": d.get("task_id", i), "prompt": p,
                            "completions": cs, "statuses": [r.status for r in rs],
                            "stdout": [r.stdout[-500:] for r in rs],
                            "stderr": [r.stderr[-500:] for r in rs], "correct": ok,
                            **{f"pass@{k}": pass_at_k(n, sum(ok), k) for k in pass_k if k <= n},
                            **({"gold": gsm8k_gold(d)} if task == "gsm8k" else {})})
        metrics = {"n": len(samples), "n_samples": n}
        for k in pass_k:
            if k <= n:
                metrics[f"pass@{k}"], metrics[f"pass@{k}_stderr"] = mean_stderr(
                    [s[f"pass@{k}"] for s in samples])
        if task == "gsm8k":  # GSM8K reports accuracy (pass@1 of the one answer)
            metrics["exact_match"], metrics["exact_match_stderr"] = mean_stderr(
                [float(s["correct"][0]) for s in samples])
        return metrics, samples
    for i, (d, p, cs) in enumerate(zip(docs, prompts, completions)):
        if task == "squad":
            em = exact_match(cs[0].strip(), d["answers"]["text"])
            gold = d["answers"]["text"]
        else:  # gsm8k chain of thought: lm-eval's "The answer is N." then last number
            m = re.search(r"The answer is (\-?[0-9\.\,]+)\.", cs[0])
            pred = parse_number(m.group(1)) if m else parse_number(cs[0])
            gold = gsm8k_gold(d)
            em = float(_close(pred, gold))
        samples.append({"doc_id": i, "prompt": p, "completion": cs[0], "gold": gold,
                        "exact_match": em})
    metrics = {"n": len(samples)}
    metrics["exact_match"], metrics["exact_match_stderr"] = mean_stderr(
        [s["exact_match"] for s in samples])
    return metrics, samples


def _close(pred, gold: float) -> bool:
    return pred is not None and math.isfinite(pred) and abs(pred - gold) < 1e-6 * max(1, abs(gold))
