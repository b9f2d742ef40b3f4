"""Membership-inference columns of the matrix: audit each (model, defense) for training-set leakage.

Members are drawn from the split the models were trained on (``data.train_split``), non-members
from the evaluation split (``data.split``), ``n`` of each, by a seeded permutation. The rest of the
evaluation split is RMIA's population z. Reference models (LiRA, RMIA) are trained like the pair's
model: the builtin recipe on a random subset of train + evaluation data, then the pair's training
defense on the same subset; they are cached, and shared by every attack of the pair with the same
number of reference models. By default each subset is as large as the target's training set
(``in_fraction`` = |train| / |train + evaluation|, 0.8 on digits), so that reference models
mimic the target: with LiRA's usual halves, the smaller reference training sets make online
LiRA miscalibrated against a target trained on 80% of the data (measured: AUC 0.479 with
halves vs 0.569 with matched subsets, undefended digits-cnn, 180 + 180 examples).
"""

from robustbench_cl.tasks.membership.task import MembershipTask

__all__ = ["MembershipTask"]
