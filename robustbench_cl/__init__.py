"""robustbench_cl: adversarial robustness and privacy workbench."""
