"""`vlmforge build selfsynth`, `build selfsynth-round`, `build cvc-trials`, and `vlmforge
selfsynth-answers` (a model's candidate answers for the next round)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vlmforge.commands._common import BuildRun, GenOptions, Quiet, Seed, build_command, generator_options

Generator = Annotated[str, typer.Option("--generator", help="generation backend: template (no model), transformers, vllm or openai")]
Model = Annotated[Optional[str], typer.Option("--model", help="checkpoint folder or Hub id (transformers, vllm), or the endpoint's model name (openai)")]
Device = Annotated[Optional[str], typer.Option("--device", help="transformers backend: auto (cuda if present, else cpu), cpu, cuda, cuda:1 (default: auto)")]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help="transformers backend: auto (bfloat16 on a GPU that supports it, else float32), float32, bfloat16, float16 (default: auto)")]
GenBatch = Annotated[Optional[int], typer.Option("--gen-batch-size", min=1, help="transformers backend: requests per forward pass (default: 8)")]
CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", help="response cache folder (default $VLMFORGE_CACHE/generation)")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="do not cache generator responses (nor the embeddings of descriptions) on disk")]
Embedder = Annotated[str, typer.Option("--embedder", help="sentence-transformers model for scores: minilm (offline default), a path or a Hub id (e.g. BAAI/bge-m3)")]
FromBuild = Annotated[Path, typer.Option("--from", help="parent build folder, e.g. builds/selfsynth/1.8.0")]
FromOcclusion = Annotated[Path, typer.Option("--from", help="occlusion build folder, e.g. builds/occlusion/2.6.0")]
Where = Annotated[Optional[str], typer.Option("--where", help="SQL condition on the parent's manifest (only matching samples)")]


def _cache(cache_dir: Path | None, no_cache: bool):
    return False if no_cache else cache_dir


def register(app: typer.Typer, build_app: typer.Typer) -> None:
    @build_command(build_app, "selfsynth")
    def build_selfsynth(
        root: Annotated[Path, typer.Option("--root", help="dataset root in its native layout")],
        source: Annotated[str, typer.Option("--source", help="cub, fgvc-aircraft, stanford-dogs or imagefolder")] = "cub",
        split: Annotated[Optional[list[str]], typer.Option("--split", help="split(s) to use (repeatable; default train; 'all' for every split); not for imagefolder")] = None,
        level: Annotated[str, typer.Option("--level", help="fgvc-aircraft label level: variant, family or manufacturer")] = "variant",
        concepts: Annotated[str, typer.Option("--concepts", help="generate (ask the concept generator), attributes (CUB annotations, no model) or a JSON file {label: \\[features]}")] = "generate",
        generator: Generator = "template",
        model: Model = None,
        concept_generator: Annotated[Optional[str], typer.Option("--concept-generator", help="backend for class concepts (default: --generator)")] = None,
        concept_model: Annotated[Optional[str], typer.Option("--concept-model", help="model for class concepts (default: --model)")] = None,
        embedder: Embedder = "minilm",
        subject: Annotated[Optional[str], typer.Option("--subject", help="what the images show (bird, dog, aircraft, leaf...); default from the source")] = None,
        instructions: Annotated[int, typer.Option("--instructions", min=1, max=3, help="description instructions per image")] = 3,
        descriptions_per_instruction: Annotated[int, typer.Option("--descriptions-per-instruction", min=1, help="samples per description instruction")] = 2,
        questions: Annotated[int, typer.Option("--questions", min=1, help="questions per image (simple, explain, step-by-step), none asked twice: at most 11")] = 4,
        min_certainty: Annotated[int, typer.Option("--min-certainty", min=1, max=4, help="CUB attributes: least certainty counted (3 probably, 4 definitely)")] = 3,
        describe_temperature: Annotated[float, typer.Option("--describe-temperature", min=0, help="sampling temperature of descriptions")] = 0.7,
        qa_temperature: Annotated[float, typer.Option("--qa-temperature", min=0, help="sampling temperature of answers")] = 0.3,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="longest generated text, in tokens")] = 256,
        device: Device = None,
        dtype: Dtype = None,
        gen_batch_size: GenBatch = None,
        generator_option: GenOptions = None,
        cache_dir: CacheDir = None,
        no_cache: NoCache = False,
        seed: Seed = 0,
        quiet: Quiet = False,
    ) -> BuildRun:
        """Self-synthesized explained QA for image classification: class concepts, per-image concept
        selection (information bottleneck), answers that must name the label. Offline:
        --concepts attributes --generator template."""
        from vlmforge.builders.selfsynth import SelfSynthBuilder, SelfSynthConfig
        from vlmforge.errors import UserError

        opts: dict[str, Any] = {"root": root}
        if source == "imagefolder":
            if split:
                raise UserError("--split does not apply to --source imagefolder (its split folders are all used)")
        else:
            opts["splits"] = None if split and "all" in split else (split or ["train"])
        if source == "fgvc-aircraft":
            opts["level"] = level
        if source == "cub" and concepts == "attributes":
            opts["attributes"] = True
        if concepts == "attributes" and source != "cub":
            raise UserError("--concepts attributes needs --source cub (the only dataset here with attribute files)")
        src = SelfSynthBuilder.open_source(source, **opts)
        cfg = SelfSynthConfig(
            seed=seed, concepts=concepts, generator=generator, model=model, concept_generator=concept_generator,
            concept_model=concept_model, embedder=embedder, subject=subject, instructions=instructions,
            descriptions_per_instruction=descriptions_per_instruction, questions=questions, min_certainty=min_certainty,
            describe_temperature=describe_temperature, qa_temperature=qa_temperature, max_new_tokens=max_new_tokens)
        builder = functools.partial(SelfSynthBuilder, generator_options=generator_options(device, dtype, gen_batch_size, generator_option),
                                    cache_dir=_cache(cache_dir, no_cache), quiet=quiet)
        return BuildRun(builder, cfg, src)

    @build_command(build_app, "selfsynth-round")
    def build_selfsynth_round(
        from_build: FromBuild,
        answers: Annotated[Path, typer.Option("--answers", help="JSONL of candidate answers: {key, question, answers: [...]} per line")],
        where: Where = None,
        embedder: Embedder = "minilm",
        quiet: Quiet = False,
    ) -> BuildRun:
        """Rejection-sampling round k+1: score a model's candidate answers against each image's concepts,
        keep the best one that names the label, else "This is an image of {label}.". Nothing is drawn at
        random (no --seed): the candidates' seed is selfsynth-answers'."""
        from vlmforge.builders.selfsynth_round import SelfSynthRoundBuilder, SelfSynthRoundConfig

        src = SelfSynthRoundBuilder.open_source("build", path=from_build, where=where)
        cfg = SelfSynthRoundConfig(answers=str(answers), embedder=embedder)
        return BuildRun(SelfSynthRoundBuilder, cfg, src)

    @build_command(build_app, "cvc-trials")
    def build_cvc_trials(
        from_build: FromOcclusion,
        where: Where = None,
        generator: Generator = "template",
        model: Model = None,
        trials: Annotated[int, typer.Option("--trials", min=1, help="reasoning trials per image (paper: 16)")] = 16,
        temperature: Annotated[float, typer.Option("--temperature", min=0, help="sampling temperature of the trials")] = 1.0,
        top_p: Annotated[float, typer.Option("--top-p", min=0, max=1, help="nucleus sampling of the trials")] = 0.9,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="longest trial, in tokens")] = 512,
        extractor: Annotated[str, typer.Option("--extractor", help="final-answer extraction: rule or generator")] = "rule",
        embedder: Embedder = "minilm",
        threshold: Annotated[float, typer.Option("--threshold", help="cosine above which an answer matches the label (the label itself, in any number, matches at any threshold)")] = 0.85,
        min_correct: Annotated[int, typer.Option("--min-correct", min=1, help="keep images with at least this many correct trials")] = 1,
        max_correct: Annotated[Optional[int], typer.Option("--max-correct", min=1, help="... and at most this many (default: 4, or --trials when fewer)")] = None,
        device: Device = None,
        dtype: Dtype = None,
        gen_batch_size: GenBatch = None,
        generator_option: GenOptions = None,
        cache_dir: CacheDir = None,
        no_cache: NoCache = False,
        seed: Seed = 0,
        quiet: Quiet = False,
    ) -> BuildRun:
        """CVC trial learning from an occlusion build: K reasoning trials per image, answers soft-matched to
        the label; images solved 1..4 times in 16 give chain-of-thought and short-answer samples."""
        from vlmforge.builders.cvc_trials import CvcTrialsBuilder, CvcTrialsConfig

        src = CvcTrialsBuilder.open_source("build", path=from_build, where=where)
        cfg = CvcTrialsConfig(seed=seed, generator=generator, model=model, trials=trials, temperature=temperature,
                              top_p=top_p, max_new_tokens=max_new_tokens, extractor=extractor, embedder=embedder,
                              threshold=threshold, min_correct=min_correct, max_correct=max_correct)
        builder = functools.partial(CvcTrialsBuilder, generator_options=generator_options(device, dtype, gen_batch_size, generator_option),
                                    cache_dir=_cache(cache_dir, no_cache), quiet=quiet)
        return BuildRun(builder, cfg, src)

    @app.command("selfsynth-answers")
    def selfsynth_answers(
        from_build: FromBuild,
        output: Annotated[Path, typer.Option("--output", "-o", help="JSONL file to write (input of build selfsynth-round --answers)")],
        generator: Generator = "transformers",
        model: Model = None,
        samples: Annotated[int, typer.Option("--samples", min=1, help="candidate answers per question")] = 8,
        temperature: Annotated[float, typer.Option("--temperature", min=0, help="sampling temperature")] = 0.7,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="longest answer, in tokens")] = 256,
        device: Device = None,
        dtype: Dtype = None,
        gen_batch_size: GenBatch = None,
        generator_option: GenOptions = None,
        cache_dir: CacheDir = None,
        no_cache: NoCache = False,
        seed: Seed = 0,
        quiet: Quiet = False,
    ) -> None:
        """Ask a model (typically the one trained on the previous round) each question of a selfsynth build
        or round, several times, and write the candidates as JSONL for `build selfsynth-round`."""
        from vlmforge.builders.selfsynth_round import write_candidate_answers

        n = write_candidate_answers(from_build, output, generator, model, samples, temperature, max_new_tokens,
                                    generator_options(device, dtype, gen_batch_size, generator_option),
                                    _cache(cache_dir, no_cache), seed, quiet)
        if not quiet:
            from vlmforge.progress import console

            console.print(f"[green]wrote[/] {n} questions' candidates to {output}")
