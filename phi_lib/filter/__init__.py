"""Stage 02: filtering web and code by educational value (phi-1 sec. 2.1, phi-1.5 sec. 2.4).

An LLM judge labels a sample (`annotate`) or reference data does (`reference`: textbook
passages vs web pages, DCLM), a head on embeddings or fastText on the text learns the labels
(`classifier`, `fasttext_head`), the classifier scores the whole pre-filtered corpus, and
`evalset` measures it on held-out labelled sets. `stage` runs it as six steps (`steps/`)
that talk through files (`files`), each skipped while its fingerprint (`keys`) is unchanged. The same classifier runs at corpus scale as a datatrove block
(`datatrove_block`).
"""
from phi_lib.filter.classifier import EduClassifier, load_classifier, train_classifier
from phi_lib.filter.prompts import annotation_prompt, logprob_score, parse_score
from phi_lib.filter.stage import FilterStage

__all__ = ["EduClassifier", "FilterStage", "annotation_prompt", "load_classifier",
           "logprob_score", "parse_score", "train_classifier"]
