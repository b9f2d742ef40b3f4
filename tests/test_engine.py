"""The matrix engine: cells, cascade, clean-once, append + fsync, resume, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import robustbench_cl as rbcl
from robustbench_cl.attacks.base import Attack
from robustbench_cl.data.subset import draw_subset
from robustbench_cl.engine.config import list_suites, load_config
from robustbench_cl.errors import UserError


def small_config(**overrides) -> dict:
    config = {
        "suite": "small",
        "seed": 0,
        "data": {"name": "digits", "n": 24},
        "models": [{"spec": "builtin:digits-cnn", "name": "cnn"}],
        "defenses": [
            {"defense": "none"},
            {"defense": "pgd-at", "name": "at", "params": {"eps": 0.1, "steps": 2, "epochs": 1}},
        ],
        "attacks": [
            {"attack": "fgsm", "threat": {"norm": "linf", "eps": [0.05, 0.2]}},
            {
                "attack": "pgd",
                "params": {"steps": 5},
                "threat": {"norm": "linf", "eps": [0.05, 0.2]},
            },
            {
                "attack": "pgd",
                "name": "pgd-l2",
                "params": {"steps": 5},
                "threat": {"norm": "l2", "eps": 1.0},
            },
        ],
        "engine": {"sanity_probe_size": 8},
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    return rbcl.run(small_config(), out=tmp_path_factory.mktemp("run") / "small", profile=None)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]


def test_run_writes_cells_meta_and_config(small_run):
    records = _records(small_run)
    cleans = [r for r in records if r["type"] == "clean"]
    cells = [r for r in records if r["type"] == "cell"]
    assert len(cleans) == 2  # the clean outcome once per (model, defense)
    assert len(cells) == 2 * (2 + 2 + 1)
    meta = json.loads((small_run / "meta.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["versions"] and meta["config_hash"]
    assert yaml.safe_load((small_run / "config.yaml").read_text())["suite"] == "small"
    for cell in cells:
        assert len(cell["outcomes"]) == 24
        assert cell["robust_count"] == sum(1 for o in cell["outcomes"] if o == 1)
        low, high = cell["robust_ci95"]
        assert low <= cell["robust_accuracy"] <= high
        assert isinstance(cell["robust_accuracy"], float)


def test_cascade_only_attacks_still_robust_samples(small_run):
    records = _records(small_run)
    cleans = {r["id"]: r for r in records if r["type"] == "clean"}
    cells = [r for r in records if r["type"] == "cell"]
    for fgsm in (c for c in cells if c["attack"]["attack"] == "fgsm"):
        pgd = next(
            c for c in cells if c["group_id"] == fgsm["group_id"] and c["attack"]["attack"] == "pgd"
        )
        correct = cleans[fgsm["pair_id"]]["correct"]
        for index, (first, second) in enumerate(zip(fgsm["outcomes"], pgd["outcomes"])):
            if not correct[index]:
                assert first == second == -1  # never attack a misclassified sample
            elif first == 0:
                assert second == -1  # broken by FGSM: PGD does not spend on it
            else:
                assert second in (0, 1)
        assert pgd["attacked"] == fgsm["robust_count"]


def test_summary_derives_worst_case_from_outcomes(small_run):
    from robustbench_cl.tasks.classification.summary import pair_summaries

    summary = rbcl.load_run(small_run)
    for pair in pair_summaries(summary):
        linf_02 = next(w for w in pair.worst_case if w.label == "linf 0.2")
        cells = [c for c in pair.cells if c.threat.norm.value == "linf" and c.threat.eps == 0.2]
        assert linf_02.robust_accuracy == min(c.robust_accuracy for c in cells)
        assert sum(linf_02.breaks.values()) == round(
            (pair.clean_accuracy - linf_02.robust_accuracy) * pair.n
        )
        if linf_02.breaks["pgd"] > 0:
            assert linf_02.best_known_attack == "pgd"


def test_resume_does_no_attack_work_and_changes_nothing(small_run, monkeypatch):
    before = (small_run / "cells.jsonl").read_bytes()

    def forbidden(*args, **kwargs):
        raise AssertionError("an attack ran during a resume of a finished run")

    monkeypatch.setattr(Attack, "__call__", forbidden)
    rbcl.run(small_config(), out=small_run, profile=None, resume=True)
    assert (small_run / "cells.jsonl").read_bytes() == before


def test_an_interrupted_run_resumes_from_its_last_whole_cell(small_run, tmp_path):
    lines = (small_run / "cells.jsonl").read_text().splitlines(keepends=True)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_text((small_run / "config.yaml").read_text())
    (partial / "cells.jsonl").write_text("".join(lines[:4]) + lines[4][:40])  # torn last line
    rbcl.run(small_config(), out=partial, profile=None, resume=True)
    resumed = [json.loads(line) for line in (partial / "cells.jsonl").read_text().splitlines()]
    original = _records(small_run)
    key = lambda r: r["id"]  # noqa: E731
    timings = ("wall_time", "attack_seconds", "sanity_probe")
    strip = lambda r: {k: v for k, v in r.items() if k not in timings}  # noqa: E731
    assert [strip(r) for r in sorted(resumed, key=key)] == [
        strip(r) for r in sorted(original, key=key)
    ]


def test_resume_refuses_a_different_config(small_run):
    with pytest.raises(UserError, match="different config"):
        rbcl.run(small_config(seed=1), out=small_run, profile=None, resume=True)


def test_results_are_deterministic(small_run, tmp_path):
    again = rbcl.run(small_config(), out=tmp_path / "again", profile=None)
    first = {
        r["id"]: r["outcomes"] if r["type"] == "cell" else r["correct"] for r in _records(small_run)
    }
    second = {
        r["id"]: r["outcomes"] if r["type"] == "cell" else r["correct"] for r in _records(again)
    }
    assert first == second


def test_packaged_suites_validate_in_every_profile():
    from robustbench_cl.engine.task import RunContext
    from robustbench_cl.tasks.jailbreak import expand_jailbreak
    from robustbench_cl.tasks.pairs import expand
    from robustbench_cl.tasks.retrieval import expand_retrieval
    from robustbench_cl.tasks.screens import expand_screens

    suites = {
        "quickstart",
        "vision",
        "generative",
        "membership",
        "vlp",
        "llm",
        "privacy",
        "textret",
    }
    assert suites <= set(list_suites())
    for profile in ("quick", "full"):
        config = load_config("quickstart", profile=profile)
        assert {a.attack for a in config.attacks} == {"fgsm", "pgd", "autoattack"}
        assert {d.defense for d in config.defenses} == {"none", "pgd-at", "rae"}
        for suite in list_suites():  # every name, parameter and threat model resolves
            config = load_config(suite, profile=profile)
            from robustbench_cl.engine.task import active_tasks, validate_task_sections

            config = validate_task_sections(config)
            assert (
                expand(config)
                or config.retrieval
                or config.jailbreak
                or config.screens
                or config.tasks
            )
            for task in active_tasks(config):  # every task validates its section and plans
                if task.name not in ("classification", "membership", "generation"):
                    assert task(RunContext(config, Path("unused"), torch.device("cpu"))).plan()
            if config.retrieval is not None:
                assert expand_retrieval(config)
            if config.jailbreak is not None:
                assert expand_jailbreak(config)["columns"]
            if config.screens is not None:
                assert expand_screens(config)
    quick = load_config("quickstart", profile="quick")
    full = load_config("quickstart", profile="full")
    for section in ("membership", "generation", "retrieval", "jailbreak", "screens"):
        assert getattr(quick, section) and getattr(full, section)  # the demo keeps every slice
    # the demo runs fewer samples, never weaker attacks or defenses
    assert quick.attacks == full.attacks and quick.defenses == full.defenses
    assert quick.retrieval.attacks == full.retrieval.attacks
    assert quick.jailbreak.attacks == full.jailbreak.attacks
    assert quick.jailbreak.defenses == full.jailbreak.defenses
    assert quick.screens == full.screens


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"attacks": [{"attack": "pgdd", "threat": {"eps": 0.1}}]},
            "attacks\\[0\\].attack: unknown attack 'pgdd'; did you mean 'pgd'",
        ),
        (
            {"attacks": [{"attack": "pgd", "threat": {"eps": -0.1}}]},
            "eps: must be a finite number >= 0",
        ),
        ({"attacks": [{"attack": "pgd", "threat": {"eps": 2.0}}]}, "larger than the bounds allow"),
        (
            {"attacks": [{"attack": "pgd", "stepz": 3, "threat": {"eps": 0.1}}]},
            "attacks\\[0\\].stepz: unknown config key",
        ),
        (
            {"attacks": [{"attack": "pgd", "params": {"stepz": 3}, "threat": {"eps": 0.1}}]},
            "attacks\\[0\\].pgd.stepz: unknown parameter",
        ),
        ({"attacks": [{"attack": "fgsm", "threat": {"norm": "l1", "eps": 1.0}}]}, "supports norms"),
        ({"modelz": []}, "modelz: unknown config key"),
        (
            {"models": [{"spec": "builtin:digits-cnnn"}]},
            "models\\[0\\].spec: unknown model 'digits-cnnn'",
        ),
        (
            {"defenses": [{"defense": "none"}, {"defense": "pgd-att"}]},
            "defenses\\[1\\].defense: unknown defense",
        ),
        (
            {"defenses": [{"defense": "pgd-at", "params": {"epochs": "x"}}]},
            "defenses\\[0\\].epochs: must be an integer",
        ),
        (
            {"attacks": [{"attack": "pgd", "threat": {"norm": "l2", "eps": 50.0}}]},
            "l2 eps 50 is larger than the bounds allow",
        ),
        ({"data": {"name": "digits", "n": 0}}, "data.n"),
    ],
)
def test_bad_configs_get_one_line_errors(change, message):
    config = small_config(**change)
    with pytest.raises(UserError, match=message) as error:
        rbcl.run(config, out=None, profile=None) if "modelz" not in change else load_config(
            config, profile=None
        )
    assert "\n" not in str(error.value)


def test_unknown_suite_and_profile_and_broken_yaml(tmp_path):
    with pytest.raises(UserError, match="did you mean 'quickstart'"):
        load_config("quickstrat")
    with pytest.raises(UserError, match="unknown profile 'huge'"):
        load_config("quickstart", profile="huge")
    broken = tmp_path / "broken.yaml"
    broken.write_text("suite: x\nattacks: [\n  - {attack: pgd\n")
    with pytest.raises(UserError, match="broken YAML at line"):
        load_config(broken)


def test_run_writes_results_json_that_follows_the_schema(small_run):
    from robustbench_cl.engine.results import SCHEMA_VERSION, validate_results

    results = json.loads((small_run / "results.json").read_text())
    validate_results(results)
    assert results["schema_version"] == SCHEMA_VERSION
    assert results["run"]["config_hash"] and results["run"]["complete"]
    records = [r for r in _records(small_run) if r["type"] == "cell"]
    assert [c["id"] for c in results["cells"]] == [r["id"] for r in records]
    for cell, record in zip(results["cells"], records):
        assert cell["threat"] == record["threat"]
        assert cell["robust_accuracy"] == record["robust_accuracy"]
        assert isinstance(cell["cost"]["forward"], int)
        assert (cell["cost"]["forward"] > 0) == (cell["attacked"] > 0)


def test_examples_are_real_successful_adversarials_inside_the_ball(small_run):
    from safetensors.torch import load_file

    from robustbench_cl.threat import ThreatModel

    cells = [r for r in _records(small_run) if r["type"] == "cell" and r["examples"]]
    assert cells, "no cell kept examples"
    for record in cells:
        tensors = load_file(str(small_run / record["examples"]))
        threat = ThreatModel.from_dict(record["threat"])
        assert 0 < len(tensors["index"]) <= 3
        threat.check(tensors["adversarial"], tensors["clean"])  # raises outside the ball
        assert (tensors["adversarial_prediction"] != tensors["label"]).all()
        assert (tensors["clean_prediction"] == tensors["label"]).all()
        outcomes = torch.tensor(record["outcomes"])
        # examples carry dataset rows; outcomes are per evaluated sample (the drawn subset)
        config = yaml.safe_load((small_run / "config.yaml").read_text())
        data = rbcl.load_dataset(config["data"]["name"], split=config["data"]["split"])
        evaluated = draw_subset(data.y, config["data"]["n"], config["seed"])
        positions = [int((evaluated == row).nonzero()) for row in tensors["index"]]
        assert (outcomes[positions] == 0).all()  # each example was broken in this cell
        assert torch.equal(tensors["label"], data.y[tensors["index"]])


def test_display_names_must_not_collide():
    twice = small_config(
        defenses=[{"defense": "none", "name": "same"}, {"defense": "pgd-at", "name": "same"}]
    )
    with pytest.raises(UserError, match="both labelled"):
        rbcl.run(twice, out=None, profile=None)
    attacks = [
        {"attack": "pgd", "params": {"steps": 5}, "threat": {"norm": "linf", "eps": 0.1}},
        {"attack": "pgd", "params": {"steps": 9}, "threat": {"norm": "linf", "eps": 0.1}},
    ]
    with pytest.raises(UserError, match="distinct `name`"):
        rbcl.run(small_config(attacks=attacks), out=None, profile=None)


def test_auto_batch_size_backs_off_on_out_of_memory(tmp_path, monkeypatch):
    from robustbench_cl.attacks.fgsm import FGSM

    calls = []
    original = FGSM.__call__

    def limited(self, model, x, y, threat, **options):  # noqa: ANN001, ANN003, ANN202
        calls.append(len(x))
        if len(x) > 8:
            raise torch.OutOfMemoryError("simulated")
        return original(self, model, x, y, threat, **options)

    monkeypatch.setattr(FGSM, "__call__", limited)
    config = small_config(
        defenses=[{"defense": "none"}],
        attacks=[{"attack": "fgsm", "threat": {"norm": "linf", "eps": 0.1}}],
    )
    auto = rbcl.run(
        dict(config, engine={"batch_size": "auto", "sanity_checks": False}),
        out=tmp_path / "auto",
        profile=None,
    )
    assert max(calls) > 8 and calls[-1] <= 8  # it tried big, then halved until it fit
    fixed = rbcl.run(
        dict(config, engine={"batch_size": 8, "sanity_checks": False}),
        out=tmp_path / "fixed",
        profile=None,
    )
    outcomes = [
        [r.get("outcomes") for r in _records(run) if r["type"] == "cell"] for run in (auto, fixed)
    ]
    assert outcomes[0] == outcomes[1]


def test_bf16_attacks_are_judged_in_fp32_and_agree_with_fp32(tmp_path):
    config = small_config(
        defenses=[{"defense": "none"}],
        attacks=[{"attack": "pgd", "params": {"steps": 5}, "threat": {"norm": "linf", "eps": 0.1}}],
        data={"name": "digits", "n": 64},
    )
    runs = {
        precision: _records(
            rbcl.run(
                dict(config, engine={"precision": precision, "sanity_checks": False}),
                out=tmp_path / precision,
                profile=None,
            )
        )
        for precision in ("fp32", "bf16")
    }
    accuracy = {
        p: [r for r in records if r["type"] == "cell"][0]["robust_accuracy"]
        for p, records in runs.items()
    }
    assert (
        abs(accuracy["fp32"] - accuracy["bf16"]) <= 0.1
    )  # within about the Wilson interval at n=64


@pytest.mark.slow
def test_compiled_models_give_the_same_outcomes(tmp_path):
    config = small_config(
        defenses=[{"defense": "none"}],
        attacks=[{"attack": "fgsm", "threat": {"norm": "linf", "eps": 0.1}}],
        data={"name": "digits", "n": 16},
    )
    runs = [
        rbcl.run(
            dict(config, engine={"compile": flag, "sanity_checks": False}),
            out=tmp_path / str(flag),
            profile=None,
        )
        for flag in (False, True)
    ]
    cells = [[r["outcomes"] for r in _records(run) if r["type"] == "cell"] for run in runs]
    assert cells[0] == cells[1]


def test_a_threat_budget_sets_the_attacks_steps_and_is_part_of_the_cell_id(tmp_path):
    from robustbench_cl.tasks.pairs import expand

    def config(budget: dict) -> dict:
        threat = {"norm": "linf", "eps": 0.1, "budget": budget}
        return {
            "suite": "budget",
            "data": {"name": "digits", "n": 16},
            "models": [{"spec": "builtin:digits-cnn"}],
            "attacks": [{"attack": "pgd", "params": {"steps": 20}, "threat": threat}],
            "engine": {"sanity_checks": False, "examples": 0},
        }

    run_dir = rbcl.run(config({"steps": 3}), out=tmp_path / "run", profile=None)
    cell = next(r for r in map(json.loads, open(run_dir / "cells.jsonl")) if r["type"] == "cell")
    assert cell["attack"]["settings"]["steps"] == 3  # the budget, not the params' 20
    assert cell["threat"]["budget"]["steps"] == 3
    assert cell["cost"]["backward"] <= 3 * 16
    plain = expand(load_config(config({}), profile=None))[0].cells[0]
    budgeted = expand(load_config(config({"steps": 3}), profile=None))[0].cells[0]
    assert plain.id != budgeted.id
    with pytest.raises(UserError, match=r"attacks\[0\]\.threat\.budget\.queries: pgd has no"):
        expand(load_config(config({"queries": 100}), profile=None))
    with pytest.raises(UserError, match=r"attacks\[0\]\.threat\.budget\.stepz: unknown key"):
        expand(load_config(config({"stepz": 3}), profile=None))
