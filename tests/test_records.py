"""Typed cells.jsonl records: every packaged task declares a model per record type, the loop
refuses a record that does not follow its model, and every committed run's records follow
them (and the generated JSON Schema of a cells.jsonl line)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

import robustbench_cl  # noqa: F401  (registers the tasks)
from robustbench_cl.engine import loop
from robustbench_cl.engine.records import check_record
from robustbench_cl.engine.results import records_schema
from robustbench_cl.engine.task import task_classes
from robustbench_cl.tasks.classification import ClassificationTask

REPORTS = Path(__file__).resolve().parent.parent / "reports"
COMMITTED = sorted(REPORTS.glob("*/cells.jsonl"))


def test_every_packaged_task_types_each_record_it_writes():
    for task in task_classes():
        assert task.record_models, task.name
        assert set(task.record_models) == set(task.record_types), task.name
        for kind, model in task.record_models.items():
            assert model.model_fields["type"].annotation.__args__ == (kind,), (task.name, kind)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_records_follow_their_models_and_the_generated_schema(path):
    models = {k: (t.name, m) for t in task_classes() for k, m in t.record_models.items()}
    validator = jsonschema.Draft202012Validator(records_schema())
    lines = path.read_text().splitlines()
    assert lines
    for line in lines:
        record = json.loads(line)
        name, model = models[record["type"]]
        check_record({record["type"]: model}, name, record)
        validator.validate(record)


def _a_cell_record() -> dict:
    record = json.loads(
        next(
            line for line in (REPORTS / "vision" / "cells.jsonl").open() if '"type": "cell"' in line
        )
    )
    check_record(ClassificationTask.record_models, "classification", record)
    return record


def test_a_record_with_a_mistyped_missing_or_extra_field_is_refused_naming_it():
    models = ClassificationTask.record_models
    bad = {**_a_cell_record(), "robust_count": "12"}
    with pytest.raises(RuntimeError, match=r"cell record .* CellRecord: robust_count"):
        check_record(models, "classification", bad)
    missing = _a_cell_record()
    del missing["outcomes"]
    with pytest.raises(RuntimeError, match="outcomes: Field required"):
        check_record(models, "classification", missing)
    with pytest.raises(RuntimeError, match="robust_acc: Extra inputs"):
        check_record(models, "classification", {**_a_cell_record(), "robust_acc": 0.5})
    with pytest.raises(RuntimeError, match="undeclared type 'cel'"):
        check_record(models, "classification", {**_a_cell_record(), "type": "cel"})


def test_the_loop_checks_a_record_before_it_appends_it(tmp_path, monkeypatch):
    """A task bug that writes a bad record fails its unit and leaves the store without it."""
    import robustbench_cl as rbcl

    finish = ClassificationTask.finish_cell

    def broken(self, *args, **kwargs):
        # a typed record changed without validation (model_copy does not validate): the loop's
        # check at the append still refuses it
        return finish(self, *args, **kwargs).model_copy(update={"robust_count": -1})

    monkeypatch.setattr(ClassificationTask, "finish_cell", broken)
    config = {
        "suite": "t",
        "data": {"name": "digits", "n": 24},
        "models": [{"spec": "builtin:digits-cnn"}],
        "attacks": [{"attack": "fgsm", "threat": {"norm": "linf", "eps": 0.1}}],
    }
    with pytest.raises(RuntimeError, match="robust_count: Input should be greater"):
        rbcl.run(config, out=tmp_path / "run", profile=None)
    types = [json.loads(x)["type"] for x in (tmp_path / "run" / "cells.jsonl").open()]
    assert types == ["clean"]
    assert loop.check_record is check_record


def test_the_loop_owns_wall_time_a_record_that_sets_its_own_is_refused(tmp_path, monkeypatch):
    import robustbench_cl as rbcl

    finish = ClassificationTask.finish_cell

    def timed(self, *args, **kwargs):
        return finish(self, *args, **kwargs).model_copy(update={"wall_time": 1.0})

    config = {
        "suite": "t",
        "data": {"name": "digits", "n": 24},
        "models": [{"spec": "builtin:digits-cnn"}],
        "attacks": [{"attack": "fgsm", "threat": {"norm": "linf", "eps": 0.1}}],
    }
    run_dir = rbcl.run(config, out=tmp_path / "ok", profile=None)
    stored = [json.loads(x) for x in (run_dir / "cells.jsonl").open()]
    assert all(r["wall_time"] > 0 for r in stored)  # measured by the loop for every record
    monkeypatch.setattr(ClassificationTask, "finish_cell", timed)
    with pytest.raises(RuntimeError, match="set its record's wall_time: the loop measures it"):
        rbcl.run(config, out=tmp_path / "run", profile=None)


def test_reading_tolerates_a_later_versions_fields_and_names_a_missing_one():
    from robustbench_cl.engine.task import typed
    from robustbench_cl.errors import UserError

    record = _a_cell_record()
    assert typed({**record, "added_later": 1}).id == record["id"]
    missing = dict(record)
    del missing["outcomes"]
    with pytest.raises(UserError, match=r"^cells.jsonl: the cell record .* CellRecord .*outcomes"):
        typed(missing)


def test_non_finite_values_are_stored_as_json_writes_them():
    from robustbench_cl.engine.records import AttackRef, attack_entry

    ref = AttackRef(attack="art:x", name=None, params={"norm": float("inf")}, settings={})
    assert attack_entry(ref)["params"] == {"norm": float("inf")}
