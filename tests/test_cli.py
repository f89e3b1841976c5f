import json
import re
import subprocess
import sys

import vlmforge
from vlmforge.builders.copy import CopyBuilder


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vlmforge.cli", *args], capture_output=True, text=True, **kw)


def test_missing_folder_is_one_line_exit_2(tmp_path):
    r = run("build", "copy", "--coco-root", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_malformed_json_is_one_line_exit_2(tmp_path, sample_coco):
    bad = tmp_path / "captions.json"
    bad.write_text('{"images": [1, 2,')
    r = run("build", "copy", "--captions", str(bad), "--images", str(sample_coco / "val2017"), "--out", str(tmp_path))
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr


def test_query_formats_and_refusal(tmp_path, sample_coco):
    out = tmp_path / "b"
    assert run("build", "copy", "--coco-root", str(sample_coco), "--out", str(out), "-q").returncode == 0
    b = out / "copy" / CopyBuilder.VERSION
    r = run("manifest", "query", str(b), "SELECT key, width FROM samples ORDER BY key LIMIT 2", "--format", "json")
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert r.returncode == 0 and len(rows) == 2 and rows[0]["width"] == 480
    r = run("manifest", "query", str(b), "SELECT count(*) AS n FROM samples", "--format", "csv")
    assert r.stdout.splitlines() == ["n", "12"]
    r = run("manifest", "query", str(b), "DELETE FROM samples")
    assert r.returncode == 2 and "read-only" in r.stderr
    # a PIVOT without IN runs as several statements (it makes a type): the way that runs is named, and runs
    r = run("manifest", "query", str(b), "PIVOT samples ON split USING count(*)")
    assert r.returncode == 2 and "PIVOT samples ON split IN ('train', 'test')" in r.stderr, r.stderr
    r = run("manifest", "query", str(b), "PIVOT (SELECT split FROM samples) ON split IN ('val', 'test') USING count(*)",
            "--format", "csv")
    assert r.returncode == 0 and r.stdout.splitlines() == ["val,test", "12,0"], r.stdout + r.stderr
    r = run("manifest", "stats", str(b))
    assert r.returncode == 0 and re.search(r"│ val +│ 12 +│ 1 +│ 0 +│", r.stdout), r.stdout  # samples, shards, rejects
    r = run("manifest", "diff", str(b), str(b))
    counts = dict(re.findall(r"│ (\w+) +│ (\d+) +│", r.stdout))
    assert r.returncode == 0 and counts == dict.fromkeys(
        ["only_in_a", "only_in_b", "image_differs", "json_differs", "other_member_differs"], "0"), r.stdout
    fewer = vlmforge.build("subset", "build", out=tmp_path / "f", source_options={
        "path": str(b), "where": "key NOT IN (SELECT key FROM samples ORDER BY key LIMIT 3)"})
    r = run("manifest", "diff", str(b), str(fewer.path))
    counts = dict(re.findall(r"│ (\w+) +│ (\d+) +│", r.stdout))
    assert counts["only_in_a"] == "3" and counts["only_in_b"] == "0" and counts["json_differs"] == "0", r.stdout
    assert run("sample", "coco", "--out", str(tmp_path / "s"), "--images", "2").returncode == 0
    assert (tmp_path / "s" / "annotations" / "instances_val2017.json").exists()


def test_a_build_output_root_names_the_builds_under_it(coco_build):
    root = coco_build.path.parent.parent  # OUT, not OUT/copy/<version>
    for folder in (root, coco_build.path.parent):  # OUT, or OUT/copy
        r = run("verify", str(folder))
        assert r.returncode == 2 and "not a vlmforge build folder" in r.stderr and str(coco_build.path) in r.stderr


def test_a_build_where_every_input_is_rejected_warns(tmp_path):
    recs = [{"id": f"r{i}", "image": f"nope{i}.jpg",
             "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]} for i in range(2)]
    (tmp_path / "l.json").write_text(json.dumps(recs))
    r = run("build", "copy", "--source", "llava-json", "--json", str(tmp_path / "l.json"), "--image-root", str(tmp_path),
            "--out", str(tmp_path / "o"))
    assert r.returncode == 0 and "warning: no sample was built: every input was rejected" in r.stderr
