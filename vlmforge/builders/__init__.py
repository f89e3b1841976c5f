"""Builders by name. Each entry is loaded on demand so that `vlmforge --help` stays fast."""

from __future__ import annotations

from vlmforge.registry import load_registered

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
    "model-ready": "vlmforge.builders.model_ready:ModelReadyBuilder",
}


def get_builder(name: str):
    return load_registered(BUILDERS, name, "builder")
