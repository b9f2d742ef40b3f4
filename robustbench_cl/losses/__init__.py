"""Losses shared by attacks and defenses: the contrastive family (InfoNCE, DCL/DCLW,
MV-InfoNCE, MV-DHEL, MoCHi hard negatives, CWCL, MW/AUC)."""

from robustbench_cl.losses.contrastive import (
    cwcl,
    dcl,
    hard_negative_info_nce,
    info_nce,
    mochi_negatives,
    mv_dhel,
    mv_infonce,
    mw_loss,
    pair_loss,
)

__all__ = [
    "cwcl",
    "dcl",
    "hard_negative_info_nce",
    "info_nce",
    "mochi_negatives",
    "mv_dhel",
    "mv_infonce",
    "mw_loss",
    "pair_loss",
]
