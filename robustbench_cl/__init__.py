"""robustbench_cl: attack and defend models under one threat model, and report honestly.

import robustbench_cl as rbcl
model = rbcl.load_model("builtin:digits-cnn")
x, y = rbcl.load_dataset("digits", split="test").sample(n=256)  # stratified, seeded
threat = rbcl.ThreatModel(norm="linf", eps=0.1)
attack = rbcl.make_attack("pgd", steps=10, step_size=0.025, random_start=False)
result = attack(model, x, y, threat)
run_dir = rbcl.run("quickstart", out="runs/demo")
rbcl.write_report(run_dir)
"""

from __future__ import annotations

from robustbench_cl._version import __version__ as __version__
from robustbench_cl.attacks import Attack, AttackResult, Cost, make_attack
from robustbench_cl.data import TensorData, load_dataset
from robustbench_cl.defenses import Defense, make_defense
from robustbench_cl.engine import load_config, load_run, run
from robustbench_cl.engine.results import load_results
from robustbench_cl.errors import ThreatModelViolation, UserError
from robustbench_cl.models import Frozen, Normalize, Preprocessed, load_model
from robustbench_cl.registry import list_attacks, list_datasets, list_defenses, list_models
from robustbench_cl.report.html import write_report
from robustbench_cl.threat import Budget, ThreatModel

# last: the packaged tasks build on everything above, and register themselves
import robustbench_cl.tasks  # noqa: E402, F401  isort: skip

__all__ = [
    "Attack",
    "AttackResult",
    "Budget",
    "Cost",
    "Defense",
    "Frozen",
    "Normalize",
    "Preprocessed",
    "TensorData",
    "ThreatModel",
    "ThreatModelViolation",
    "UserError",
    "list_attacks",
    "list_datasets",
    "list_defenses",
    "list_models",
    "load_config",
    "load_dataset",
    "load_model",
    "load_results",
    "load_run",
    "make_attack",
    "make_defense",
    "run",
    "write_report",
]
