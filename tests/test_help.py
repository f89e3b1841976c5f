"""`--help` texts: every option says what it does, and an option whose default is filled in by the
command (a prompt, a split) names that default."""

import typer

from vlmforge.cli import app


def _commands(cmd, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, path + (name,))
    else:
        yield " ".join(path), cmd


def _option(command: str, flag: str):
    cmd = dict(_commands(typer.main.get_command(app)))[command]
    return next(p for p in cmd.params if flag in getattr(p, "opts", ()))


def test_every_option_has_a_help_text():
    """Before: train's --weight-decay, --epochs, --lora-r, --lora-alpha, --lora-dropout, --log-every and
    --keep-checkpoints showed a bare default and nothing else."""
    bare = [f"{name} {'/'.join(p.opts)}" for name, cmd in _commands(typer.main.get_command(app))
            for p in cmd.params if type(p).__name__ == "TyperOption" and p.name != "help" and not (p.help or "").strip()]
    assert bare == []


def test_default_prompts_are_the_ones_the_builders_use():
    """Before: grading's and vg's --prompt/--answer-template said nothing of the text used without them."""
    from vlmforge.builders.grading import KL_ANSWER, KL_PROMPT
    from vlmforge.builders.vg import VG_ANSWER, VG_PROMPT

    for command, flag, default in (("build grading", "--prompt", KL_PROMPT), ("build grading", "--answer-template", KL_ANSWER),
                                   ("build vg", "--prompt", VG_PROMPT), ("build vg", "--answer-template", VG_ANSWER)):
        text = default.removeprefix("<image>\n")
        assert f"default: '{text}'" in _option(command, flag).help, (command, flag)


def test_copy_split_names_its_default():
    """Before: copy's --split showed no default (it is None in the signature, val2017 in the code),
    while occlusion's showed val2017."""
    default = _option("build occlusion", "--split").default
    assert f"(default: {default})" in _option("build copy", "--split").help
