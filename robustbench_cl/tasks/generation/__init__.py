"""Generation columns: how well does each (model, defense) draw the digits it classifies?

Every pair's classifier samples the same class-conditional batch with the same sampler (gradient
ascent on the class logit from the same OOD seeds). An *independent* classifier, trained
separately with another architecture (``builtin:digits-judge``), scores the samples:

- **intended-class accuracy**: how often the judge reads the class the sampler aimed for;
- **mini-FID**: the Frechet distance between the judge's penultimate features of the samples
  and of the real evaluation images (lower is better). For scale, the record also holds the
  distance of real training images (a floor) and of the raw seeds (a ceiling);
- **OOD AUROC** of the pair's own ``s(x) = logsumexp f(x)``: real evaluation images against each
  OOD seed kind (uniform, blurred, pixel- and patch-shuffled), and over all of them.

Training defenses that log their stage-2 run (DAT) add it: the AUC trace's spread, the final
curriculum T and the number of NaN batches.
"""

from robustbench_cl.report.media import save_png
from robustbench_cl.tasks.generation.audit import sample_grid
from robustbench_cl.tasks.generation.config import GenerationConfig
from robustbench_cl.tasks.generation.task import GenerationTask

__all__ = ["GenerationConfig", "GenerationTask", "sample_grid", "save_png"]
