"""Builders by name. Each entry is loaded on demand so that `vlmforge --help` stays fast."""

from __future__ import annotations

import importlib

BUILDERS: dict[str, str] = {
    "copy": "vlmforge.builders.copy:CopyBuilder",
    "occlusion": "vlmforge.builders.occlusion:OcclusionBuilder",
    "selfsynth": "vlmforge.builders.selfsynth:SelfSynthBuilder",
    "selfsynth-round": "vlmforge.builders.selfsynth_round:SelfSynthRoundBuilder",
    "cvc-trials": "vlmforge.builders.cvc_trials:CvcTrialsBuilder",
    "split": "vlmforge.builders.split:SplitBuilder",
    "subset": "vlmforge.builders.subset:SubsetBuilder",
    "mix": "vlmforge.builders.mix:MixBuilder",
    "mcqa": "vlmforge.builders.mcqa:McqaBuilder",
    "grading": "vlmforge.builders.grading:GradingBuilder",
    "vg": "vlmforge.builders.vg:VgBuilder",
}


def get_builder(name: str):
    from vlmforge.errors import UserError

    try:
        target = BUILDERS[name]
    except KeyError:
        raise UserError(f"unknown builder {name!r}; known: {', '.join(sorted(BUILDERS))}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
