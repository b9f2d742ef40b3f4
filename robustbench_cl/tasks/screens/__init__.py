"""Screenshot privacy: the ``screens:`` section of a config.

Each protector (and each of its eps) protects the test screens once; every router then reads
them. One ``screen`` record per (protector, eps) holds, per router and per screen, which PII
fields leaked (ratio > 0.6, and exactly), which task keywords were still found, and per screen
PSNR, SSIM and the l-inf distance of the 8-bit protected screenshot. DualTAP protectors are
trained on the training screens first (cached). EasyOCR is the white-box router (DualTAP and the
global PGD are optimised against its recognizer); Tesseract is black-box transfer.
"""

from robustbench_cl.tasks.screens.config import ScreensConfig, expand_screens, protector_label
from robustbench_cl.tasks.screens.results import screen_rows
from robustbench_cl.tasks.screens.task import ScreensTask

__all__ = ["ScreensConfig", "ScreensTask", "expand_screens", "protector_label", "screen_rows"]
