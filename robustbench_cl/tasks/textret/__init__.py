"""Dense text retrieval under attack: the ``textret:`` section of a config.

The first task written against the Task protocol after it existed: this module and its
template are all of it (nothing in the runner, the results, the report or the CLI names it).

Per (retriever, defense): a ``textret_clean`` record (the defense is trained or loaded first:
InfoNCE, MW or AR2 fine-tuning of a head on the frozen encoder) with MRR@10, R@1/5/10/20 and
nDCG@10 over the test queries, ranking the whole corpus. Per (retriever, defense, attack, eps):
a ``textret`` record with the same metrics under attack and ASR@k, the share of the queries
whose relevant passage was in the top k before the attack and is not after it (Wilson
intervals). For corpus poisoning, ASR@k is the share of test queries with an injected passage
in their top k. Every attack is white-box on the defended retriever (adaptive), and each cell's
attacked queries are also scored with uniformly random token swaps of the same budget (the
``noise`` column), so a flag says when the attack does no better than chance.
"""

from robustbench_cl.tasks.textret.config import TextRetConfig
from robustbench_cl.tasks.textret.metrics import metrics, ndcg10, ranks, replaced_scores, score_auc
from robustbench_cl.tasks.textret.task import TextRetrievalTask

__all__ = [
    "TextRetConfig",
    "TextRetrievalTask",
    "metrics",
    "ndcg10",
    "ranks",
    "replaced_scores",
    "score_auc",
]
