"""The packaged tasks: one module each (plan, run, results section, report section, table).

Importing this package registers them (``robustbench_cl`` does so on import); a task of your
own registers itself the same way with ``@register_task`` (see
:mod:`robustbench_cl.engine.task`).
"""

from robustbench_cl.tasks import (  # noqa: F401  (each registers itself)
    classification,
    generation,
    jailbreak,
    membership,
    retrieval,
    screens,
    textret,
)
