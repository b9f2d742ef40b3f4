"""The packaged tasks: one package each (its config, plan and run, records and results, flags,
report section and terminal table), peers of a task written outside the package.

Importing this package registers them (``robustbench_cl`` does so on import); a task of your
own registers itself the same way with ``@register_task`` (see
:mod:`robustbench_cl.engine.task`).
"""

from robustbench_cl.tasks import (  # noqa: F401  (each registers itself)
    chat_membership,
    classification,
    generation,
    jailbreak,
    membership,
    retrieval,
    screens,
    textret,
)
