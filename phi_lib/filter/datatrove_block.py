"""The educational-value classifier as a datatrove pipeline block, for corpus-scale filtering.

    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from phi_lib.filter.datatrove_block import EduScoreFilter

    pipeline = [JsonlReader("data/web/"),
                EduScoreFilter("outputs/run/02_filter_web/classifier", threshold=3.0),
                JsonlWriter("filtered/")]

Run it with any datatrove executor; the block loads the classifier lazily in each worker:

- one machine: `LocalPipelineExecutor(pipeline, tasks=64, workers=16, logging_dir=...).run()`
  (`run_local` below is a tested example);
- Slurm: `SlurmPipelineExecutor(pipeline, tasks=10_000, workers=500, time="10:00:00",
  partition="cpu", cpus_per_task=4, mem_per_cpu_gb=2, job_name="edu-filter",
  logging_dir="s3://.../logs").run()` - one Slurm array job, each task a slice of the files;
- Ray: `RayPipelineExecutor(pipeline, tasks=10_000, workers=500, logging_dir=...).run()`
  inside a `ray.init(address="auto")` cluster.

Each kept document gets its score in `metadata["edu_score"]`; dropped ones are counted under
`dropped_low_edu_score` in datatrove's stats (and written by `exclusion_writer` if given).
"""
from __future__ import annotations

from typing import Optional

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


class EduScoreFilter(BaseFilter):
    name = "📚 phi educational value"

    def __init__(self, classifier_dir: str, threshold: Optional[float] = None, batch_size: int = 64,
                 score_key: str = "edu_score", exclusion_writer=None):
        super().__init__(exclusion_writer, batch_size)
        self.classifier_dir, self.score_key = str(classifier_dir), score_key
        self.threshold = threshold
        self._clf = None

    @property
    def classifier(self):
        if self._clf is None:  # loaded in the worker, never pickled across processes
            from phi_lib.filter.classifier import load_classifier

            self._clf = load_classifier(self.classifier_dir)
            if self.threshold is None:
                self.threshold = float(self._clf.meta["label_threshold"])
        return self._clf

    def filter_batch(self, batch: list[Document]) -> list:
        scores = self.classifier.score([doc.text for doc in batch])
        out = []
        for doc, s in zip(batch, scores):
            doc.metadata[self.score_key] = s
            out.append(True if s >= self.threshold else (False, "low_edu_score"))
        return out

    def filter(self, doc: Document):
        return self.filter_batch([doc])[0]


def run_local(input_folder: str, output_folder: str, classifier_dir: str, *,
              threshold: Optional[float] = None, logging_dir: Optional[str] = None,
              tasks: int = 1, workers: int = 1, batch_size: int = 64, text_key: str = "text"):
    """Filter a folder of JSONL(.gz) files into `output_folder` with datatrove's local executor;
    returns the executor (its `logging_dir` holds datatrove's per-task stats)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    pipeline = [JsonlReader(input_folder, text_key=text_key),
                EduScoreFilter(classifier_dir, threshold=threshold, batch_size=batch_size),
                JsonlWriter(output_folder, compression=None)]
    executor = LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers,
                                     logging_dir=logging_dir or f"{output_folder}/.logs")
    executor.run()
    return executor
