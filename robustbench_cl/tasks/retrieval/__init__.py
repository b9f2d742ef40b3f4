"""Image-text retrieval under universal perturbations: fit once per source, evaluate on all.

Records (appended to ``cells.jsonl`` like every other cell):

- ``retrieval_clean``, once per model: clean TR/IR R@K and the per-query correct sets;
- ``retrieval``, per (source model, attack, eps, target model): R@K under the perturbation and
  ASR@K = |correct_clean@K minus correct_adv@K| / |correct_clean@K| (the C-PGC paper's
  definition, counted over the previously-correct queries), with Wilson intervals.

TR (image -> text) queries are images: one is correct at K when any of its captions ranks in
the top K of all test captions. IR (text -> image) queries are captions: correct at K when
their image ranks in the top K of all test images.
"""

from robustbench_cl.tasks.retrieval.config import RetrievalConfig
from robustbench_cl.tasks.retrieval.evaluate import attack_success_rate, retrieval_correct
from robustbench_cl.tasks.retrieval.task import RetrievalTask, expand_retrieval

__all__ = [
    "RetrievalConfig",
    "RetrievalTask",
    "attack_success_rate",
    "expand_retrieval",
    "retrieval_correct",
]
