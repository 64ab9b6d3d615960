"""Meta-learning of the agnostic heavy model θ0 (paper sections III.C, IV.D and V.A).

* `longtail.meta.update`: the conservative, staleness-aware update rule of θ0 (Eq. 2 / 3);
* `longtail.meta.server`: the versioned θ0 store and its ledger (feedback applied once, under a lock);
* `longtail.meta.finetune`: θ0 → θu on a scenario's support set and its query feedback
  (`specialise`), and the meta-train refresh of θ0.

Onboarding a scenario end to end (θu, the light model, the references) is `longtail.onboarding`.
"""
