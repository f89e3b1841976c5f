"""A hostile user's mistakes with the data commands: each one line (a UserError, exit 2), never a traceback,
never data read from the wrong place without a word."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

import vlmforge
from vlmforge.cli import app
from vlmforge.errors import UserError


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert isinstance(result.exception, UserError), (result.exception, result.output)
    text = str(result.exception)
    assert "\n" not in text
    return text


def _classes(root, names=("cat", "dog")):
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (16, 12), (40 * i, 90, 30 * j)).save(root / name / f"{j}.jpg")
    return root


def test_a_build_out_inside_the_image_folder_it_reads_is_refused(tmp_path):
    """Before: `--out` inside `--root` built once; the next build from that root read the build as a class
    ('copy'), its shards and manifest as not_an_image rejects, or stopped with "config or source differ"."""
    root = _classes(tmp_path / "data")
    err = one_line_error(invoke("build", "copy", "--source", "imagefolder", "--root", root, "--out", root, "-q"))
    assert err == f"{root}/copy/1.5.0 lies inside --root {root}: the next build from it would read this build's " \
                  "shards as images; choose an --out outside it"
    assert sorted(p.name for p in root.iterdir()) == ["cat", "dog"]  # nothing was left behind
    graded = _classes(tmp_path / "kl" / "train", names=("0", "1")).parent  # a builder that wraps the source
    err = one_line_error(invoke("build", "grading", "--root", graded, "--out", graded, "-q"))
    assert err.startswith(f"{graded}/grading/1.4.0 lies inside --root {graded}")
    # A build already there (made before this check, or moved in) is named, not read as a class.
    built = vlmforge.build("copy", "imagefolder", out=tmp_path / "b", source_options={"root": str(root)}, quiet=True)
    built.path.parent.rename(root / "copy")
    err = one_line_error(invoke("build", "copy", "--source", "imagefolder", "--root", root, "--out", tmp_path / "o"))
    assert err.startswith(f"{root}/copy holds vlmforge builds ({root}/copy/1.5.0), not images")


def test_grading_from_a_build_without_grades_says_so(tmp_path, coco_build):
    """Before: a parent without labels (a COCO copy) made an empty build whose note blamed a --where; the
    unlabelled records of a partly labelled parent were left out without a word."""
    err = one_line_error(invoke("build", "grading", "--from", coco_build.path, "--out", tmp_path / "g"))
    assert err.startswith("the parent has no values in column 'label': it is not a labelled build")
    graded = _classes(tmp_path / "kl", names=("0", "1"))
    labelled = vlmforge.build("copy", "imagefolder", out=tmp_path / "l", source_options={"root": str(graded)}, quiet=True)
    mixed = vlmforge.build("mix", "builds", out=tmp_path / "m", source_options={"paths": [coco_build.path, labelled.path]},
                           take=["all", "all"], quiet=True)
    r = invoke("build", "grading", "--from", mixed.path, "--out", tmp_path / "g")
    assert r.exit_code == 0, r.output
    assert "12 parent records without a 'label' value are left out" in r.output
    assert len(vlmforge.open_build(tmp_path / "g" / "grading" / "1.4.0")) == 4


@pytest.mark.parametrize("edit, says", [
    (lambda info: info.update(shards="x"), "shards is not a list of shard entries"),
    (lambda info: info.update(splits=["train"]), "splits is not an object of split counts"),
    (lambda info: info["shards"][0].pop("samples"), "shard entry number 0 lacks samples"),
])
def test_a_build_json_of_the_wrong_shape_is_one_line(tmp_path, coco_build, edit, says):
    """Before: stats, show and report ended in TypeError, AttributeError or KeyError tracebacks."""
    import shutil

    build = tmp_path / "b"
    shutil.copytree(coco_build.path, build)
    info = json.loads((build / "build.json").read_text())
    edit(info)
    (build / "build.json").write_text(json.dumps(info))
    for args in (["manifest", "stats", build], ["report", build, "--out", tmp_path / "r.html"],
                 ["show", build, "--out", tmp_path / "s.png"]):
        assert one_line_error(invoke(*args)) == f"{build}/build.json: {says}; the build folder is damaged, " \
                                                "rebuild it with --overwrite"
    r = invoke("verify", build)
    assert r.exit_code == 1 and says in r.output


def test_sample_output_that_is_a_file_or_holds_other_files(tmp_path):
    """Before: `sample coco --out FILE` (or a path under a file) and `sample classes --out FILE/x` were
    NotADirectoryError tracebacks, and `sample coco` wrote into a folder holding other data."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert one_line_error(invoke("sample", "coco", "--out", afile, "--images", 1)) == f"{afile} is a file; choose a new --out"
    for kind in ("coco", "classes"):
        assert one_line_error(invoke("sample", kind, "--out", afile / "x", "--images", 1)) == (
            f"cannot write the sample to {afile / 'x'}: {afile} is a file, not a folder; choose another --out")
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    err = one_line_error(invoke("sample", "coco", "--out", data, "--images", 1))
    assert err == f"{data} exists and is not an empty folder; choose a new --out"
    assert [p.name for p in data.iterdir()] == ["cat"]


def test_a_cut_off_llava_json_names_a_byte_inside_the_file(tmp_path):
    """Before: an error at the end of the file named an offset past it (byte 593 of a 300-byte file):
    the text was shifted on reaching the end while the error's position still counted from before."""
    from vlmforge.sources.jsonstream import iter_json_array
    from vlmforge.errors import SourceError

    recs = [{"id": f"r{i}", "conversations": [{"from": "human", "value": "hi " * 20}, {"from": "gpt", "value": "x"}]}
            for i in range(6)]
    path = tmp_path / "cut.json"
    path.write_bytes(json.dumps(recs).encode()[:300])
    with pytest.raises(SourceError, match=r"invalid JSON near byte (\d+)") as e:
        list(iter_json_array(path))
    assert int(e.value.args[0].split("near byte ")[1].split(":")[0]) <= 300


def test_vg_min_box_side_below_one_is_refused(tmp_path):
    """Before: --min-box-side 0 (or negative) was taken: boxes of no width or height became samples."""
    from vlmforge.builders.vg import VgBuilder, VgConfig
    from vlmforge.sources.base import Source

    for side in (0, -1):
        with pytest.raises(UserError, match=f"--min-box-side must be at least 1 pixel, got {side}"):
            VgBuilder(VgConfig(min_box_side=side), Source())


def test_selfsynth_names_its_sources_for_another_one(tmp_path):
    """Before: --source coco said '--root, --splits do not apply to --source coco' (and there is no --splits)."""
    err = one_line_error(invoke("build", "selfsynth", "--source", "coco", "--root", tmp_path, "--out", tmp_path / "o"))
    assert err == "selfsynth reads labelled images: --source must be cub, fgvc-aircraft, stanford-dogs or " \
                  "imagefolder, not 'coco'"


def test_build_paths_that_are_missing_or_files_are_named(tmp_path, coco_build):
    """Before: both read 'X is not a vlmforge build folder (no build.json)', also for build.json itself."""
    assert one_line_error(invoke("manifest", "stats", tmp_path / "nope")) == f"build folder not found: {tmp_path / 'nope'}"
    info = coco_build.path / "build.json"
    assert one_line_error(invoke("verify", info)) == f"{info} is a file, not a build folder; its build folder: " \
                                                     f"{coco_build.path}"


def test_show_and_report_name_the_where_and_the_output_in_the_way(tmp_path, coco_build):
    """Before: a --where that does not parse read 'the query does not parse' (which query?), a folder as
    show's --out read 'Pillow cannot write a file without a suffix', a file in the path 'File exists'."""
    err = one_line_error(invoke("report", coco_build.path, "--out", tmp_path / "r.html", "--where", "x ="))
    assert err.startswith("--where did not work: the query does not parse")
    assert one_line_error(invoke("show", coco_build.path, "--out", tmp_path)) == \
        f"--out {tmp_path} is a folder; give a file name (e.g. {tmp_path / 'sheet.png'})"
    (tmp_path / "f").write_text("x")
    for cmd, name in (("show", "s.png"), ("report", "r.html")):
        out = tmp_path / "f" / name
        assert one_line_error(invoke(cmd, coco_build.path, "--out", out)) == \
            f"cannot write {out}: {tmp_path / 'f'} is a file, not a folder"


def test_grading_from_a_folder_tree_refuses_the_options_of_a_parent_build(tmp_path):
    """Before: --where, --parent-split and --label-column were taken with --root and did nothing: a build of
    every image, which the user thought filtered."""
    root = _classes(tmp_path / "kl" / "train", names=("0", "1")).parent
    for opt, value in (("--where", "label = '0'"), ("--parent-split", "test"), ("--label-column", "grade")):
        err = one_line_error(invoke("build", "grading", "--root", root, opt, value, "--out", tmp_path / "o"))
        assert err.startswith(f"{opt} applies to a parent build (--from), not to --root")


def test_ctrl_c_before_the_first_shard_says_how_to_go_on(tmp_path, coco_build, monkeypatch):
    """Before: Ctrl-C while a build command imported its builder or opened its source ended with status 130
    and not a word (the CLI framework swallows the interrupt); only one during the build itself was said."""
    from vlmforge.builders.split import SplitBuilder

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SplitBuilder, "open_source", classmethod(interrupted))
    r = invoke("build", "split", "--from", coco_build.path, "--fraction", "0.5", "--out", tmp_path)
    assert r.exit_code == 130 and "interrupted: finished shards are kept; run the same command again to resume" \
        in r.output, r.output


def test_a_derived_build_inside_its_parent_folder_is_refused(tmp_path, coco_build):
    """Before: `--out` the parent's own folder made PARENT/split/1.3.0, a build nested in another, which the
    parent's --overwrite would delete without a word."""
    err = one_line_error(invoke("build", "split", "--from", coco_build.path, "--fraction", "0.5",
                                "--out", coco_build.path))
    assert err == f"{coco_build.path}/split/1.3.0 lies inside the parent build {coco_build.path}, whose " \
                  "--overwrite would delete it; choose an --out outside it"
    assert not (coco_build.path / "split").exists()


def test_a_class_preserving_fraction_lifted_to_one_per_class_is_said(tmp_path):
    """Before: --fraction 0.1 of classes of two samples kept every sample (one per class at least) and said
    nothing: a 'tenth' that was half the build."""
    root = _classes(tmp_path / "data")
    parent = vlmforge.build("copy", "imagefolder", out=tmp_path / "b", source_options={"root": str(root)}, quiet=True)
    r = invoke("build", "subset", "--from", parent.path, "--mode", "class-preserving", "--fraction", "0.1",
               "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert "2 split/class groups are too small for --fraction 0.1 to keep a sample (e.g. train/cat): each keeps " \
           "one, so 2 of 4 labelled samples are kept" in " ".join(r.output.split()), r.output


def test_a_split_fraction_that_keeps_no_record_of_a_split_says_so(tmp_path, coco_build):
    """Before: --fraction 0.01 of a 12-record split rounded to none and the split was gone without a word."""
    r = invoke("build", "split", "--from", coco_build.path, "--fraction", "0.01", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert "--fraction 0.01 keeps no record of split(s) val (e.g. round(0.01 x 12) = 0): they are not in the build" \
        in " ".join(r.output.split()), r.output


def test_ctrl_c_in_any_command_is_said(tmp_path, coco_build, monkeypatch):
    """Before: Ctrl-C during export, show, report or verify ended with status 130 and not a word: the CLI
    framework swallows the interrupt before main()'s handler could say it."""
    import sys

    import vlmforge.export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # the CLI quiets it after Ctrl-C: put it back
    monkeypatch.setattr(vlmforge.export, "export_llava", interrupted)
    r = invoke("export", "llava", coco_build.path, "--out", tmp_path / "x")
    assert r.exit_code == 130 and "interrupted; run the same command again to resume" in r.output, r.output


@pytest.mark.parametrize("damage", ["cut", "marker", "part"])
def test_a_resumed_build_redoes_a_shard_damaged_since(tmp_path, coco_build, damage):
    """Before: on resuming, a shard whose completion marker was cut off ended the build in a JSONDecodeError
    traceback, and a tar cut short (or a manifest part removed) since it was written was kept as done."""
    import shutil

    from vlmforge.manifests.writer import complete_shards

    build = tmp_path / "b"
    shutil.copytree(coco_build.path, build)
    if damage == "cut":
        with open(build / "val-000001.tar", "r+b") as f:
            f.truncate(5000)
    elif damage == "marker":
        (build / "manifest" / "val-000001.stats.json").write_text("{")
    else:
        (build / "manifest" / "val-000001.parquet").unlink()
    assert [s["shard"] for s in complete_shards(build, "val")] == ["val-000000.tar"]


def test_an_export_stopped_by_a_sample_llava_cannot_read_says_how_to_go_on(tmp_path, sample_coco):
    """Before: 'sample K has no conversation' and nothing more, while `export llava` has no filter: the
    way on (a subset without such samples) was left to guess."""
    import shutil

    coco = tmp_path / "coco"
    shutil.copytree(sample_coco, coco)
    captions = coco / "annotations" / "captions_val2017.json"
    doc = json.loads(captions.read_text())
    first = doc["images"][0]["id"]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != first]
    captions.write_text(json.dumps(doc))
    b = vlmforge.build("copy", "coco", out=tmp_path / "b", source_options={"coco_root": str(coco)})
    err = one_line_error(invoke("export", "llava", b.path, "--out", tmp_path / "x"))
    assert err == f"sample {first:012d} has no conversation; LLaVA needs at least one human and one gpt turn; " \
                  f"export a subset without such samples instead: vlmforge build subset --from {b.path} " \
                  "--where \"n_turns > 0\""
    kept = vlmforge.build("subset", "build", out=tmp_path / "s", source_options={"path": str(b.path),
                                                                                 "where": "n_turns > 0"})
    assert invoke("export", "llava", kept.path, "--out", tmp_path / "y").exit_code == 0


@pytest.mark.parametrize("kind", ["coco", "classes"])
def test_a_negative_sample_seed_is_a_usage_error(tmp_path, kind):
    """Before: numpy's 'ValueError: expected non-negative integer' traceback."""
    r = invoke("sample", kind, "--out", tmp_path / "s", "--images", 1, "--seed", -1)
    assert r.exit_code == 2 and "Invalid value for '--seed'" in r.output and not (tmp_path / "s").exists(), r.output


@pytest.mark.parametrize("kind", ["coco", "classes"])
def test_writing_a_sample_shows_progress(tmp_path, kind, monkeypatch):
    """Before: thousands of sample images took minutes without a progress bar."""
    import contextlib

    import vlmforge.progress

    seen = []

    @contextlib.contextmanager
    def bar(label, total=None, disable=False):
        seen.append((label, total, disable))
        yield lambda n=1: None

    monkeypatch.setattr(vlmforge.progress, "progress_bar", bar)
    assert invoke("sample", kind, "--out", tmp_path / "s", "--images", 2).exit_code == 0
    assert seen == [("sample images", 2, False)]


def test_two_class_folders_read_as_one_label_are_refused(tmp_path):
    """Before: '1_cat' and 'cat' were both labelled 'cat': two classes merged into one without a word."""
    root = _classes(tmp_path / "data", names=("1_cat", "cat"))
    err = one_line_error(invoke("build", "copy", "--source", "imagefolder", "--root", root, "--out", tmp_path / "o"))
    assert err == f"{root}: class folders '1_cat' and 'cat' are both read as class 'cat' (a leading number is " \
                  "dropped, _ read as a space); rename one of them"


@pytest.mark.parametrize("args", [["split", "--fraction", "0.5", "--stratify-by", "nosuch"],
                                  ["split", "--fraction", "0.5", "--group-by", "nosuch"],
                                  ["subset", "--mode", "class-exclusive", "--fraction", "0.5", "--label-column", "nosuch"]])
def test_a_column_the_parent_lacks_names_the_option(tmp_path, coco_build, args):
    """Before: 'the parent build has no column ...' left the user to find which of the options named it."""
    err = one_line_error(invoke("build", args[0], "--from", coco_build.path, *args[1:], "--out", tmp_path))
    assert err.startswith(f"{args[-2]}: the parent build has no column 'nosuch'; its columns: ")


def test_a_folder_or_file_of_the_wrong_kind_is_named_as_such(tmp_path):
    """Before: 'COCO root not found' for a file that is there, 'LLaVA JSON file not found' for a folder."""
    afile = tmp_path / "instances.json"
    afile.write_text("{}")
    out = tmp_path / "o"
    assert one_line_error(invoke("build", "copy", "--coco-root", afile, "--out", out)) == \
        f"--coco-root {afile} is a file; give the folder holding annotations/ and <split>/"
    assert one_line_error(invoke("build", "copy", "--source", "llava-json", "--json", tmp_path, "--out", out)) == \
        f"--json {tmp_path} is a folder; give the LLaVA JSON file (a list of records)"
    assert one_line_error(invoke("export", "llava-split", tmp_path, "--out", out, "--fraction", "0.5")) == \
        f"{tmp_path} is a folder; give the LLaVA JSON file to split (a list of records)"
    assert one_line_error(invoke("build", "vg", "--root", afile, "--out", out)).startswith(
        f"--root {afile} is a file; give the folder holding objects.json and image_data.json")


def test_an_output_under_a_file_names_the_file(tmp_path, coco_build):
    """Before: 'File exists' (mkdir's words), which names neither the file in the way nor what to do."""
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "x.csv"
    err = one_line_error(invoke("manifest", "query", coco_build.path, "SELECT 1", "--format", "csv", "-o", out))
    assert err == f"cannot create the folder for --output {out}: {tmp_path / 'f'} is a file, not a folder"


def test_an_evaluation_folder_given_as_a_build_is_named_as_such(tmp_path):
    """An evaluation's folder holds a run.json, as a training run's does: `manifest stats` and `build subset
    --from` called it 'a training run (a model: give it as --model)'."""
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "run.json").write_text(json.dumps({"task": "mcqa", "data": "builds/mcqa/1.1.0"}))
    (ev / "predictions.jsonl").write_text("")
    said = "is not a vlmforge build folder (no build.json); it is an evaluation's output folder (predictions.jsonl)"
    assert said in one_line_error(invoke("manifest", "stats", ev))
    assert said in one_line_error(invoke("build", "subset", "--from", ev, "--out", tmp_path / "b", "-q"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"config": {}}))
    assert "it is a training run" in one_line_error(invoke("manifest", "stats", run))
