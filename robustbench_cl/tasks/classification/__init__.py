"""Classification: clean and robust accuracy of every (model, defense) pair under every attack,
the AutoAttack-style cascade, the worst case per threat model, and its report.

- :mod:`.task`: the task (plan, the clean pass, one unit per cell)
- :mod:`.cells`: one attack cell, shard by shard, and its record
- :mod:`.records`, :mod:`.results`: the ``cells.jsonl`` records and the ``results.json`` models
- :mod:`.summary`: the numbers derived from the records (worst case, flags across cells)
- :mod:`.report`: the report's context, the terminal matrix and the flag rows
- :mod:`.sanity`: the probes and flags of an evaluation that may be unreliable
- :mod:`.export`: RobustBench leaderboard entries (``export --format robustbench``)
"""

from robustbench_cl.tasks.classification import export  # noqa: F401  (registers robustbench)
from robustbench_cl.tasks.classification.task import ClassificationTask

__all__ = ["ClassificationTask"]
