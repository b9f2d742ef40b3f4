"""Chat LLMs under jailbreak attacks: the ``jailbreak:`` section of a config.

Records (appended to ``cells.jsonl`` like every other cell):

- ``jailbreak_clean``, once per (model, defense): benign utility (the answer starts with the
  expected one), over-refusal on borderline prompts, and the defense's training compute
  (per-sequence forward and backward passes, attack included) and wall time;
- ``jailbreak``, per (model, defense, attack, eps): per harmful test prompt the *forced*
  outcome (greedy teacher-forced prediction equals the whole harmful target) and the *judged*
  outcome of free greedy generation by each of the section's ``judges`` (1 jailbroken, 0 not,
  -1 undetermined; the first judge is primary), with Wilson intervals, and the prompt as sent
  (token attacks: the instruction followed by the decoded suffix, re-encoded for every
  outcome) and the response.
- ``jailbreak_judges``, once with ``labels:``: each judge against human labels. Every attack runs on every harmful prompt (no cascade): per-attack ASR is
  the number users compare; the worst case over attacks is derived in the results.

The attacks are white-box on the defended model: C-AdvUL is evaluated under attacks that know
its weights (the adaptive setting).
"""

from robustbench_cl.tasks.jailbreak import export  # noqa: F401  (registers jailbreakbench)
from robustbench_cl.tasks.jailbreak.config import JailbreakConfig, expand_jailbreak
from robustbench_cl.tasks.jailbreak.task import JailbreakTask

__all__ = ["JailbreakConfig", "JailbreakTask", "expand_jailbreak"]
