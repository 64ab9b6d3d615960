"""Onboarding a scenario, written once: θu from θ0 and its feedback, the light model, the references.

* `longtail.onboarding.recipe`: `Recipe`, every setting, as named presets (``default``, ``paper``);
* `longtail.onboarding.core`: `onboard`, the one function that wires a scenario's flow, and `Theta0`;
* `longtail.onboarding.parallel`: `onboard_many`, many scenarios in worker processes of one machine;
* `longtail.onboarding.promotion`: publishing an onboarding's models, and champion/challenger
  promotion on validation rows.

The pipelines' onboarding stage, the CLI and the benchmarks all call `onboard`.
"""

from longtail.onboarding.core import REFERENCES, Onboarding, Theta0, onboard
from longtail.onboarding.recipe import PRESETS, Recipe

__all__ = ["PRESETS", "REFERENCES", "Onboarding", "Recipe", "Theta0", "onboard"]
