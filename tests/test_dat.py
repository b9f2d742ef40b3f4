"""DAT: the loss terms on hand-computed cases, the curriculum rule, BatchNorm frozen in stage 2,
the sampler inside the bounds, the generation columns and the generate command."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robustbench_cl.attacks.generation import SEED_KINDS, class_conditional_ascent, ood_seeds
from robustbench_cl.data.base import TensorData
from robustbench_cl.defenses import make_defense
from robustbench_cl.defenses.dat import (
    Curriculum,
    batch_auc,
    energy_bce,
    energy_logit,
    freeze_batchnorm,
)
from robustbench_cl.errors import UserError
from robustbench_cl.tasks.generation.audit import frechet_distance, sample_grid


def test_energy_logit_is_logsumexp():
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    expected = torch.tensor([math.log(2.0), math.log(math.e + math.e**2)])
    assert torch.allclose(energy_logit(logits), expected)


def test_energy_bce_matches_a_hand_computed_value():
    s_real, s_gen = torch.tensor([0.0, 2.0]), torch.tensor([-1.0, 1.0])

    def softplus(v: float) -> float:
        return math.log1p(math.exp(v))

    # BCE(s -> 1) = softplus(-s); BCE(s -> 0) = softplus(s); mean over 2B = 4 terms
    expected = (softplus(-0.0) + softplus(-2.0) + softplus(-1.0) + softplus(1.0)) / 4
    assert energy_bce(s_real, s_gen).item() == pytest.approx(expected, rel=1e-6)


def test_batch_auc_counts_pairs_and_ties():
    assert batch_auc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 0.0])).item() == 1.0
    assert batch_auc(torch.tensor([0.0]), torch.tensor([1.0])).item() == 0.0
    # pairs: (1 vs 1) tie = 0.5, (1 vs 0) = 1, (0 vs 1) = 0, (0 vs 0) tie = 0.5 -> 0.5
    assert batch_auc(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])).item() == 0.5


def test_curriculum_steps_up_after_a_full_window_at_the_threshold():
    curriculum = Curriculum(threshold=0.75, window=2, max_steps=2)
    assert curriculum.update(0.5) is False  # the window is not full yet
    assert curriculum.update(1.0) is True and curriculum.steps == 1  # mean 0.75 reaches it
    assert curriculum.update(1.0) is False  # the window restarted after the increase
    assert curriculum.update(0.25) is False and curriculum.steps == 1  # mean 0.625
    assert curriculum.update(1.0) is False  # last two: 0.25, 1.0
    assert curriculum.update(1.0) is True and curriculum.steps == 2
    assert [curriculum.update(1.0) for _ in range(6)] == [False] * 6  # capped at max_steps
    assert curriculum.steps == 2


def test_freeze_batchnorm_keeps_running_statistics():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    before = model[1].running_mean.clone()
    model.train()
    freeze_batchnorm(model)
    assert model.training and not model[1].training
    model(torch.randn(8, 1, 6, 6) * 5 + 3)
    assert torch.equal(model[1].running_mean, before)
    model.train()  # without the freeze, train mode updates them
    model(torch.randn(8, 1, 6, 6) * 5 + 3)
    assert not torch.equal(model[1].running_mean, before)


def _tiny_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    )


def _tiny_data(n: int = 48) -> TensorData:
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = (torch.rand(n, 1, 8, 8, generator=generator) * 0.3 + y.view(-1, 1, 1, 1) * 0.3).clamp(0, 1)
    return TensorData("tiny", "train", x, y, 3)


def test_stage_two_holds_batchnorm_statistics_and_logs_its_curriculum():
    dat = make_defense(
        "dat", eps=0.5, pgd_steps=2, epochs=2, batch_size=16, auc_window=2, max_gen_steps=3
    )
    network = _tiny_bn()
    network[1].running_mean.fill_(0.25)
    network[1].running_var.fill_(2.0)
    ema, log = dat.train_stage2(network, _tiny_data())
    assert torch.allclose(network[1].running_mean, torch.full((4,), 0.25))
    assert torch.allclose(network[1].running_var, torch.full((4,), 2.0))
    assert torch.allclose(ema[1].running_mean, torch.full((4,), 0.25))
    assert len(log["auc"]) == 2 * 3 and log["nan_batches"] == 0
    assert all(0 <= t <= 3 for t in log["gen_steps"])
    assert log["gen_steps"] == sorted(log["gen_steps"])  # T never decreases


def test_bn_train_ablation_moves_the_statistics():
    dat = make_defense("dat", eps=0.5, pgd_steps=1, epochs=1, batch_size=16, bn_mode="train")
    network = _tiny_bn()
    before = network[1].running_mean.clone()
    dat.train_stage2(network, _tiny_data())
    assert not torch.equal(network[1].running_mean, before)


def test_dat_settings_are_checked():
    with pytest.raises(UserError, match="bn_mode"):
        make_defense("dat", bn_mode="frozen")
    with pytest.raises(UserError, match="epochs"):
        make_defense("dat", epochs=2.5)


def test_ood_seeds_are_in_bounds_and_keep_real_statistics():
    real = _tiny_data().x
    generator = torch.Generator().manual_seed(0)
    seeds = ood_seeds(40, real, generator)
    assert seeds.shape == (40, 1, 8, 8) and seeds.min() >= 0 and seeds.max() <= 1
    shuffled = ood_seeds(6, real, torch.Generator().manual_seed(1), kinds=("pixel_shuffle",))
    patches = ood_seeds(6, real, torch.Generator().manual_seed(1), kinds=("patch_shuffle",))
    pool = {tuple(sorted(image.flatten().tolist())) for image in real}
    for image in (*shuffled, *patches):  # a permutation of some real image's pixels
        assert tuple(sorted(image.flatten().tolist())) in pool
    assert set(SEED_KINDS) == {"uniform", "blurred", "pixel_shuffle", "patch_shuffle"}


def test_sampler_stays_in_bounds_and_raises_the_class_logit():
    model = _tiny_bn().eval()
    x0 = ood_seeds(12, _tiny_data().x, torch.Generator().manual_seed(0))
    target = torch.arange(12) % 3
    samples = class_conditional_ascent(model, x0, target, steps=15, step_size=0.5)
    assert samples.min() >= 0 and samples.max() <= 1
    with torch.no_grad():
        before = model(x0).gather(1, target[:, None])
        after = model(samples).gather(1, target[:, None])
    assert (after > before).float().mean() > 0.9
    assert all(p.requires_grad for p in model.parameters())  # restored afterwards


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_shift():
    a = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = frechet_distance(a, a + 2.0)
    assert shifted == pytest.approx(5 * 4.0, rel=1e-6)  # ||mu shift||^2, same covariance


def test_sample_grid_has_one_row_per_class():
    samples = torch.rand(3 * 4, 1, 8, 8)
    grid = sample_grid(samples, per_class=4, n_classes=3, columns=4)
    assert grid.shape == (1, 3 * 9 + 1, 4 * 9 + 1)
    assert torch.equal(grid[:, 1:9, 1:9], samples[0])


def test_generate_command_writes_a_grid(tmp_path):
    from PIL import Image

    from robustbench_cl.cli.main import cli

    output = tmp_path / "grid.png"
    result = CliRunner().invoke(
        cli,
        [
            "generate",
            "--model",
            "builtin:digits-cnn",
            "--class",
            "3",
            "--n",
            "10",
            "--steps",
            "5",
            "--out",
            str(tmp_path / "run"),
            "-o",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    assert Image.open(output).size == (8 * 17 + 1, 2 * 17 + 1)
    assert "the judge (builtin:digits-judge) labels" in " ".join(result.output.split())
    bad = CliRunner().invoke(cli, ["generate", "--class", "12", "-o", str(output)])
    assert bad.exit_code == 2 and bad.output.startswith("error: --class: 12 is not a class")
    assert len(bad.output.strip().splitlines()) == 1


def test_generate_runs_through_the_engine_as_a_config_generation_section_would(tmp_path):
    """The command's run directory holds the same record and samples as a config's
    ``generation: {classes: [3]}`` section gives for that pair."""
    from safetensors.torch import load_file

    import robustbench_cl as rbcl
    from robustbench_cl.cli.main import cli
    from robustbench_cl.engine import load_run

    args = ["generate", "--model", "builtin:digits-cnn", "--class", "3", "--n", "6"]
    args += ["--steps", "4", "--out", str(tmp_path / "cli"), "-o", str(tmp_path / "g.png")]
    assert CliRunner().invoke(cli, args).exit_code == 0
    config = {
        "suite": "generate",
        "data": {"name": "digits"},
        "models": [{"spec": "builtin:digits-cnn"}],
        "defenses": [{"defense": "none", "params": {}}],
        "generation": {"n_per_class": 6, "steps": 4, "classes": [3]},
        "engine": {"examples": 0},
    }
    rbcl.run(config, out=tmp_path / "config", profile=None)
    ours, theirs = (load_run(tmp_path / d).of("generation")[0] for d in ("cli", "config"))
    assert ours.id == theirs.id
    keys = ("intended_class_accuracy", "mini_fid", "ood_auroc", "n_samples")
    assert {k: getattr(ours, k) for k in keys} == {k: getattr(theirs, k) for k in keys}
    a, b = (load_file(tmp_path / d / ours.samples) for d in ("cli", "config"))
    assert torch.equal(a["samples"], b["samples"])
    assert a["targets"].tolist() == [3] * 6


def test_generation_columns_in_a_run_and_its_report(tmp_path):
    import json

    import robustbench_cl as rbcl
    from robustbench_cl.engine.results import validate_results
    from robustbench_cl.report.html import render_report

    config = {
        "suite": "generation-small",
        "data": {"name": "digits", "n": 16},
        "models": [{"spec": "builtin:digits-cnn"}],
        "defenses": [{"defense": "none"}],
        "generation": {"n_per_class": 2, "steps": 3},
    }
    run = rbcl.run(config, out=tmp_path / "run", profile=None)
    results = json.loads((run / "results.json").read_text())
    validate_results(results)
    (entry,) = results["generation"]
    assert entry["n_samples"] == 20 and entry["samples_in_bounds"]
    assert entry["fid_train_vs_eval"] < entry["fid_seeds_vs_eval"]  # the scale is sane
    assert set(entry["ood_auroc_by_kind"]) == set(SEED_KINDS)
    assert (run / entry["grid"]).exists()
    html = render_report(run)
    assert 'id="generation"' in html and 'class="grid" src="data:image/png;base64,' in html
    from tests.conftest import assert_resumes_after_a_torn_line

    # the last record is the generation: torn, it is recomputed identically
    assert_resumes_after_a_torn_line(run, lambda: rbcl.run(config, out=run, profile=None))
