"""Our membership attacks beside ML Privacy Meter's reference attack, on the same models.

ML Privacy Meter 1.0.1 (PyPI ``privacy-meter``, privacytrustlab) is the last release on PyPI; its
``privacy_meter.model`` imports TensorFlow at module level without declaring it, so ``make bench``
installs ``tensorflow-cpu`` and then ``privacy-meter`` with ``pip --no-deps`` (its pins are
older than ours). Its ``ReferenceMetric`` is the reference attack of Ye et al. (2022, "Attack
R"): per audited example, the loss of each reference model (none trained on it) gives the
distribution of that example's loss when it is not a member; the example is called a member at
FPR tolerance alpha when the target's loss is below that distribution's alpha quantile (linear
interpolation), one threshold per alpha.

The same target (``builtin:digits-cnn``, trained on the 1,437 digits of the train split), the
same 180 members (a seeded draw of the train split) and 180 non-members (the first 180 test
digits), and the same 8 reference models: the
digits-cnn recipe on random halves of the population with every audited example left out (so
every reference model is OUT for every audited example, as Privacy Meter's reference attack
assumes). Ours run on those models: LiRA offline (a Gaussian z-score per example), RMIA
offline and LOSS, which are other attacks, so only their AUCs sit beside Privacy Meter's. The
parity check is Attack R itself computed from our signals: an example's score is where the
target's loss falls in the linear interpolation of its reference losses (the inverse of the
quantile Privacy Meter thresholds at), so at every tolerance our calls must equal Privacy
Meter's, example by example. Privacy Meter's ROC is its (FPR, TPR) over 1,001 tolerances.

Writes reports/bench/privacy_meter_peer.json: AUC and TPR at 1% FPR side by side, our
bootstrap intervals, and the wall time of each attack given the models (as a ratio).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import robustbench_cl as rbcl
from robustbench_cl.models.builtin import REFERENCE_RECIPES
from robustbench_cl.privacy.membership import make_membership_attack, reference_signals
from robustbench_cl.privacy.metrics import membership_metrics
from robustbench_cl.utils import seeded

ROOT = Path(__file__).resolve().parent.parent


def privacy_meter_reference(target, references, members, outsiders):  # noqa: ANN001, ANN201
    """Privacy Meter 1.0.1's reference attack: (AUC, TPR at 1% FPR, seconds)."""
    from privacy_meter.audit import Audit
    from privacy_meter.constants import InferenceGame
    from privacy_meter.dataset import Dataset
    from privacy_meter.hypothesis_test import linear_itp_threshold_func
    from privacy_meter.information_source import InformationSource
    from privacy_meter.information_source_signal import ModelLoss
    from privacy_meter.metric import ReferenceMetric
    from privacy_meter.model import PytorchModelTensor

    loss = torch.nn.CrossEntropyLoss()
    dataset = Dataset(
        data_dict={
            "train": {"x": members[0], "y": members[1]},
            "test": {"x": outsiders[0], "y": outsiders[1]},
        },
        default_input="x",
        default_output="y",
    )
    start = time.perf_counter()
    target_source = InformationSource(
        models=[PytorchModelTensor(target, loss, batch_size=512)], datasets=[dataset]
    )
    reference_source = InformationSource(
        models=[PytorchModelTensor(m, loss, batch_size=512) for m in references],
        datasets=[dataset],
    )
    metric = ReferenceMetric(
        target_info_source=target_source,
        reference_info_source=reference_source,
        signals=[ModelLoss()],
        hypothesis_test_func=linear_itp_threshold_func,
    )
    with tempfile.TemporaryDirectory() as logs:
        audit = Audit(
            metrics=metric,
            inference_game_type=InferenceGame.PRIVACY_LOSS_MODEL,
            target_info_sources=target_source,
            reference_info_sources=reference_source,
            fpr_tolerances=list(np.linspace(0, 1, 1001)),
            logs_directory_names=logs,
        )
        audit.prepare()
        result = audit.run()[0][0]
    seconds = time.perf_counter() - start
    positives, negatives = len(members[1]), len(outsiders[1])
    tpr, fpr = result.tp / positives, result.fp / negatives
    allowed = fpr <= 0.01
    return {
        "auc": float(result.roc_auc),
        "tpr_at_1pct_fpr": float(tpr[allowed].max()) if allowed.any() else 0.0,
        "seconds": seconds,
        "predictions": np.asarray(result.predicted_labels, dtype=bool),  # (tolerances, N)
    }


def attack_r_levels(target, references, x, y) -> np.ndarray:  # noqa: ANN001
    """Attack R from our LOSS attack's scores (the library's signal, not a re-implementation): the level (0..1) at which the target's loss sits in the
    linearly interpolated quantile curve of the example's reference losses. Privacy Meter calls
    a member at tolerance alpha when the loss is below the alpha quantile (alpha strictly
    inside (0, 1)), i.e. when alpha > this level."""
    loss = make_membership_attack("loss")  # our LOSS signal: minus the cross-entropy
    target_loss = -loss.score(target, x, y).numpy()
    losses = np.stack([-loss.score(m, x, y).numpy() for m in references], axis=1)
    ordered = np.sort(losses, axis=1)
    grid = np.linspace(0, 1, ordered.shape[1])
    return np.array([np.interp(t, row, grid) for t, row in zip(target_loss, ordered)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=180, help="members and non-members each")
    parser.add_argument("--references", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "reports" / "bench" / "privacy_meter_peer.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = rbcl.load_dataset("digits", split="train")
    test = rbcl.load_dataset("digits", split="test")
    target = rbcl.load_model("builtin:digits-cnn").eval()
    generator = torch.Generator().manual_seed(0)
    member_index = torch.randperm(len(train.y), generator=generator)[: args.n]
    outsider_index = torch.arange(args.n)
    members = (train.x[member_index], train.y[member_index])
    outsiders = (test.x[outsider_index], test.y[outsider_index])

    # the population without any audited example; each reference model trains on half of it
    keep_train = torch.ones(len(train.y), dtype=torch.bool)
    keep_train[member_index] = False
    population_x = torch.cat([train.x[keep_train], test.x[args.n :]])
    population_y = torch.cat([train.y[keep_train], test.y[args.n :]])
    _, train_reference, recipe = REFERENCE_RECIPES["digits-cnn"]
    references = []
    start = time.perf_counter()
    for k in range(args.references):
        with seeded(1000 + k):
            half = torch.randperm(len(population_y))[: len(population_y) // 2]
        model = train_reference(population_x[half], population_y[half], 1000 + k)
        references.append(model.eval().requires_grad_(False))
    training_seconds = time.perf_counter() - start

    x = torch.cat([members[0], outsiders[0]])
    y = torch.cat([members[1], outsiders[1]])
    is_member = torch.cat([torch.ones(args.n), torch.zeros(args.n)]).bool()
    ours = {}
    for name, params in (
        ("LiRA-offline", {"attack": "lira", "online": False}),
        ("RMIA-offline", {"attack": "rmia", "online": False}),
        ("LOSS", {"attack": "loss"}),
    ):
        start = time.perf_counter()
        attack = make_membership_attack(params.pop("attack"), **params)
        references_set = None
        if attack.uses_references:
            inside = torch.zeros(args.references, len(y), dtype=torch.bool)  # all OUT
            references_set = reference_signals(references, inside, torch.arange(len(y)), x, y)
        scores = attack.score(target, x, y, references_set)
        seconds = time.perf_counter() - start
        metrics = membership_metrics(scores, is_member, seed=0)
        ours[name] = {
            "auc": metrics["auc"],
            "auc_ci95": metrics["auc_ci95"],
            "tpr_at_1pct_fpr": metrics["tpr_at_fpr"]["0.01"],
            "tpr_at_1pct_fpr_ci95": metrics["tpr_at_fpr_ci95"]["0.01"],
            "seconds": seconds,
        }
    theirs = privacy_meter_reference(target, references, members, outsiders)
    predictions = theirs.pop("predictions")
    levels = attack_r_levels(target, references, x, y)
    tolerances = np.linspace(0, 1, 1001)
    inner = slice(1, len(tolerances) - 1)  # PM fixes the two ends (all out, all in)
    ours_calls = tolerances[inner, None] > levels[None, :]
    differ = int((ours_calls != predictions[inner]).sum())
    attack_r = membership_metrics(torch.as_tensor(-levels), is_member, seed=0)
    ours["Attack R (ours, Privacy Meter's algorithm)"] = {
        "auc": attack_r["auc"],
        "auc_ci95": attack_r["auc_ci95"],
        "tpr_at_1pct_fpr": attack_r["tpr_at_fpr"]["0.01"],
        "tpr_at_1pct_fpr_ci95": attack_r["tpr_at_fpr_ci95"]["0.01"],
        "calls_differing_from_privacy_meter": differ,
        "calls_compared": int(ours_calls.size),
    }
    lira = ours["LiRA-offline"]
    report = {
        "what": "membership AUC and TPR at 1% FPR: ours and ML Privacy Meter 1.0.1's reference "
        "attack on the same target, audited examples and reference models",
        "peer": "privacy-meter 1.0.1 (PyPI), installed with --no-deps beside tensorflow-cpu "
        "(its model module imports TensorFlow without declaring it)",
        "model": "builtin:digits-cnn",
        "members": args.n,
        "non_members": args.n,
        "reference_models": args.references,
        "reference_training_seconds": training_seconds,
        "privacy_meter_reference": theirs,
        "ours": ours,
        "attack_r_calls_identical": differ == 0,
        "privacy_meter_auc_within_our_lira_offline_interval": lira["auc_ci95"][0]
        <= theirs["auc"]
        <= lira["auc_ci95"][1],
        "time_ratio_lira_offline_over_privacy_meter": lira["seconds"] / theirs["seconds"],
        "torch_threads": args.threads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
