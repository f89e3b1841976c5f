"""`vlmforge verify`, `manifest ...`, `show` and `export llava` on damaged builds and user mistakes:
one error line (exit 2) or a named problem (verify, exit 1), never a traceback or rows dropped silently."""

import io
import shutil
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "vlmforge.cli", *map(str, args)], capture_output=True, text=True)


def one_error_line(r, *words):
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def build(tmp_path, coco_build):
    """A private copy of the 12-sample, 3-shard COCO copy build."""
    dst = tmp_path / "b"
    shutil.copytree(coco_build.path, dst)
    return dst


def test_verify_names_a_missing_rejects_part(build):
    (build / "manifest" / "val-000001.rejects.parquet").unlink()
    r = run("verify", build)
    assert r.returncode == 1 and "val-000001.rejects.parquet: manifest part missing" in r.stdout + r.stderr


def test_reindex_and_diff_refuse_a_manifest_with_a_missing_part(build, coco_build):
    """Before: reindex made an index without the part's rows, and diff reported them as removed keys."""
    before = (build / "manifest.duckdb").read_bytes()
    (build / "manifest" / "val-000001.parquet").unlink()
    one_error_line(run("manifest", "reindex", build), "manifest/val-000001.parquet", "damaged")
    assert (build / "manifest.duckdb").read_bytes() == before
    one_error_line(run("manifest", "diff", coco_build.path, build), "manifest/val-000001.parquet")
    # a copy without manifest.duckdb is indexed on first use: refused the same way
    (build / "manifest.duckdb").unlink()
    one_error_line(run("manifest", "stats", build), "manifest/val-000001.parquet")


def test_query_output_folder_is_made_and_mistakes_are_one_line(tmp_path, coco_build):
    """Before: --output in a new folder was a FileNotFoundError traceback, --limit -1 showed all rows but
    one, and an unknown --format emptied the --output file before it was refused."""
    import pyarrow.parquet as pq

    out = tmp_path / "new" / "dir" / "keys.parquet"
    r = run("manifest", "query", coco_build.path, "SELECT key FROM samples", "--format", "parquet", "-o", out)
    assert r.returncode == 0 and pq.read_table(out).num_rows == 12
    csv_out = tmp_path / "other" / "keys.csv"
    r = run("manifest", "query", coco_build.path, "SELECT key FROM samples", "--format", "csv", "-o", csv_out)
    assert r.returncode == 0 and len(csv_out.read_text().splitlines()) == 13
    one_error_line(run("manifest", "query", coco_build.path, "SELECT key FROM samples", "--limit", "-1"), "--limit")
    one_error_line(run("manifest", "query", coco_build.path, "SELECT key FROM samples", "--format", "xml", "-o", csv_out),
                   "xml")
    assert len(csv_out.read_text().splitlines()) == 13
    one_error_line(run("manifest", "query", coco_build.path, "SELECT CAST('a' AS INT) FROM samples",
                       "--format", "parquet", "-o", out), "query failed")


def test_query_json_is_json_with_nan_and_infinity(coco_build):
    """Before: NaN and infinities came out as NaN/Infinity, which JSON readers (jq, JSON.parse) refuse."""
    import json

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    r = run("manifest", "query", coco_build.path, "SELECT 'nan'::DOUBLE AS x, [1.0, 'inf'::DOUBLE] AS l, 1/0 AS d, "
            "{'a': '-inf'::DOUBLE} AS s, 2.5::DOUBLE AS ok FROM samples LIMIT 1", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout, parse_constant=refuse) == {"x": None, "l": [1.0, None], "d": None, "s": {"a": None}, "ok": 2.5}


def test_a_manifest_part_of_no_shard_is_found_and_refused(build):
    """Before: verify said ok, and reindex counted the stray part's rows twice (12 + 5 samples)."""
    shutil.copyfile(build / "manifest" / "val-000000.parquet", build / "manifest" / "val-000007.parquet")
    r = run("verify", build)
    assert r.returncode == 1 and "manifest/val-000007.parquet: manifest part of no shard in build.json" in r.stdout + r.stderr
    one_error_line(run("manifest", "reindex", build), "manifest/val-000007.parquet", "no shard in build.json")


def test_an_unreadable_manifest_part_is_a_finding_not_a_traceback(build):
    """Before: verify, reindex and diff stopped with a pyarrow/duckdb traceback."""
    part = build / "manifest" / "val-000001.parquet"
    good = part.read_bytes()
    part.write_bytes(b"not parquet")
    r = run("verify", build)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "manifest/val-000001.parquet: manifest part unreadable" in r.stdout + r.stderr
    one_error_line(run("manifest", "reindex", build), "manifest/val-000001.parquet unreadable")
    one_error_line(run("manifest", "diff", build, build), "manifest/val-000001.parquet unreadable")
    raw = bytearray(good)  # footer intact, pages damaged
    raw[100:1000] = bytes(b ^ 0xFF for b in raw[100:1000])
    part.write_bytes(bytes(raw))
    r = run("verify", build)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "manifest/val-000001.parquet: manifest part unreadable" in r.stdout + r.stderr


def test_stats_list_a_split_without_samples(tmp_path, coco_copy):
    """Before: the per-split table was made from sample rows, so a split whose inputs were all
    rejected was missing from it."""
    import vlmforge

    for image in (coco_copy / "val2017").iterdir():
        image.write_bytes(b"not an image")
    b = vlmforge.build("copy", "coco", out=tmp_path, source_options={"coco_root": str(coco_copy), "split": "val2017"})
    assert len(b) == 0 and b.info["splits"]["val"]["rejects"] == 12
    r = run("manifest", "stats", b.path)
    assert r.returncode == 0, r.stderr
    rows = [line.replace("│", " ").split() for line in r.stdout.splitlines() if line.startswith("│")]
    assert ["val", "0", str(b.info["splits"]["val"]["shards"]), "12"] in rows


def test_diff_sees_a_member_other_than_image_and_json(tmp_path, sample_coco):
    """Before: diff compared only image_sha256 and json_sha256, so two builds differing only in a mask
    (or in whether orig.jpg is kept) were reported identical, exit 0."""
    from PIL import Image

    from tests.report.tiny_occlusion import TinyOcclusion, build_tiny_occlusion
    from vlmforge.manifests.query import diff_builds

    a = build_tiny_occlusion(sample_coco, tmp_path / "a")
    real = TinyOcclusion.process
    touched = []

    def one_mask_pixel_off(self, batch):
        out = real(self, batch)
        for group in out:
            s = group[0]
            if not touched and hasattr(s, "extras"):
                mask = Image.open(io.BytesIO(s.extras["mask.png"]))
                mask.putpixel((0, 0), 255 - mask.getpixel((0, 0)))
                buf = io.BytesIO()
                mask.save(buf, "PNG")
                s.extras["mask.png"] = buf.getvalue()
                touched.append(s.key)
        return out

    TinyOcclusion.process = one_mask_pixel_off
    try:
        b = build_tiny_occlusion(sample_coco, tmp_path / "b")
    finally:
        TinyOcclusion.process = real
    no_orig = build_tiny_occlusion(sample_coco, tmp_path / "c", keep_original=False)
    d = diff_builds(a.path, b.path)
    assert d == {"only_in_a": [], "only_in_b": [], "image_differs": [], "json_differs": [],
                 "other_member_differs": [f"{touched[0]}.mask.png"]}
    keys = sorted(r[0] for r in a.sql("SELECT key FROM samples").fetchall())
    assert diff_builds(a.path, no_orig.path)["other_member_differs"] == [f"{k}.orig.jpg" for k in keys]
    assert not any(diff_builds(a.path, a.path).values())
    r = run("manifest", "diff", a.path, b.path)
    assert r.returncode == 1 and f"{touched[0]}.mask.png" in r.stdout, r.stdout
    assert run("manifest", "diff", a.path, build_tiny_occlusion(sample_coco, tmp_path / "a2").path).returncode == 0


def test_diff_of_a_shard_with_a_damaged_header_is_one_error_line(tmp_path, coco_build, sample_coco):
    """Before the member comparison existed diff read no shard; a damaged header where the manifest points
    must be one line (exit 2), not a ValueError traceback."""
    import vlmforge

    other = vlmforge.build("copy", "coco", out=tmp_path / "o", max_samples_per_shard=4,  # other offsets: read
                           source_options={"coco_root": str(sample_coco), "split": "val2017"})
    shard = other.path / other.info["shards"][0]["shard"]
    raw = bytearray(shard.read_bytes())
    raw[124:136] = b"not a size!\0"  # the first member's size field
    shard.write_bytes(bytes(raw))
    one_error_line(run("manifest", "diff", coco_build.path, other.path), f"{shard}: no readable sample at byte 0")


def test_show_and_stats_on_a_build_without_samples_say_so(tmp_path, coco_copy, coco_build):
    """Before: `show` said "no sample matches", as if a filter had left the samples out, and `manifest
    stats` printed an empty table."""
    import vlmforge

    for image in (coco_copy / "val2017").iterdir():
        image.write_bytes(b"not an image")
    rejected = vlmforge.build("copy", "coco", out=tmp_path / "r", source_options={"coco_root": str(coco_copy), "split": "val2017"})
    none = vlmforge.build("subset", "build", out=tmp_path / "n", source_options={"path": str(coco_build.path), "where": "width < 0"})
    assert len(rejected) == len(none) == 0
    for b, says in ((rejected, f"{rejected.path} has no samples, and 12 rejects (vlmforge manifest stats {rejected.path} "
                               "counts them by reason)"),
                    (none, f"{none.path} has no samples and no rejects: its source gave no record")):
        for where in ((), ("--where", "width > 0")):
            one_error_line(run("show", b.path, "--out", tmp_path / "s.png", *where), says)
        r = run("manifest", "stats", b.path)
        assert r.returncode == 0 and says in " ".join(r.stdout.split()), r.stdout
    assert "┃ split" not in run("manifest", "stats", none.path).stdout  # no table of no split
    r = run("show", coco_build.path, "--where", "width < 0", "--out", tmp_path / "s.png")
    one_error_line(r, "no sample matches --where 'width < 0'")


def test_readers_refuse_a_build_with_a_missing_or_cut_shard(build, coco_build):
    """Before: diff reported no difference (exit 0), eval stopped with a FileNotFoundError traceback,
    and training with one from a data loader worker."""
    from vlmforge.errors import UserError
    from vlmforge.evaluation.items import iter_build
    from vlmforge.manifests.read import open_build
    from vlmforge.training.data import resolve_shards

    shard = build / "val-000001.tar"
    data = shard.read_bytes()
    shard.unlink()
    one_error_line(run("manifest", "diff", coco_build.path, build), "val-000001.tar: missing", "vlmforge verify")
    for read in (lambda: list(iter_build(build, "val")), lambda: resolve_shards([str(build)]),
                 lambda: list(open_build(build).samples())):
        with pytest.raises(UserError, match=r"is damaged: shard val-000001.tar: missing"):
            read()
    shard.write_bytes(data[:-1024])  # cut short: a stat tells it from the shard build.json records
    with pytest.raises(UserError, match=rf"val-000001.tar: {len(data) - 1024} bytes, build.json records {len(data)}"):
        resolve_shards([str(build)])
    shard.write_bytes(data)
    assert len(list(iter_build(build, "val"))) == 12


def test_reindex_says_what_it_indexed(build):
    (build / "manifest.duckdb").unlink()
    r = run("manifest", "reindex", build)
    assert r.returncode == 0, r.stderr
    assert f"reindexed {build / 'manifest.duckdb'}: 12 samples from 3 manifest parts" in " ".join((r.stdout + r.stderr).split())


def _problems(build):
    r = run("verify", build)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    return [line[2:] for line in r.stderr.splitlines() if line.startswith("x ")]


def test_verify_names_the_sample_a_flipped_byte_is_in(build):
    """Before: only the shard's sha256 was reported, not which sample (or member) it hit."""
    import pyarrow.parquet as pq

    rows = pq.read_table(build / "manifest" / "val-000001.parquet").to_pylist()
    victim = rows[2]
    shard = build / "val-000001.tar"
    raw = bytearray(shard.read_bytes())
    raw[victim["offset"] + 1024 + 100] ^= 1  # inside its first member's data (header, then the jpg)
    shard.write_bytes(bytes(raw))
    problems = _problems(build)
    assert problems[0].startswith("val-000001.tar: sha256 ")
    assert problems[1:] == [f"val-000001.tar: sample {victim['key']}: its jpg does not match the manifest's image_sha256"]


def test_verify_reads_each_shard_once(build, monkeypatch):
    """Before: each shard was read twice, once for its sha256 and once for its members' hashes (twice the
    I/O of verify, and of publish, on a build of hundreds of GB)."""
    import builtins

    from vlmforge.manifests import verify

    opened: list[str] = []

    def counting_open(file, *args, **kwargs):
        if str(file).endswith(".tar"):
            opened.append(str(file).rsplit("/", 1)[-1])
        return builtins.open(file, *args, **kwargs)

    import tarfile

    from vlmforge.manifests.read import open_build

    tar_open = tarfile.open

    def counting_tar_open(name=None, *args, **kwargs):  # tarfile opening the file itself is a read too
        if name is not None:
            opened.append(str(name).rsplit("/", 1)[-1])
        return tar_open(name, *args, **kwargs)

    monkeypatch.setattr(verify, "open", counting_open, raising=False)
    monkeypatch.setattr(tarfile, "open", counting_tar_open)
    assert verify.verify_build(open_build(build), quiet=True) == []
    assert sorted(opened) == ["val-000000.tar", "val-000001.tar", "val-000002.tar"]
    shard = build / "val-000002.tar"  # a tar cut short: the parse fails, the file's hash still covers it all
    shard.write_bytes(shard.read_bytes()[:1500])
    problems = _problems(build)
    assert any(p.startswith("val-000002.tar: 1500 bytes") for p in problems), problems
    assert any(p.startswith("val-000002.tar: sha256 ") for p in problems), problems


def test_verify_finds_an_edited_manifest(build):
    """Before: verify said ok for an edited manifest.duckdb (which queries, show, report and the dataset
    card read), a manifest part whose offsets or hashes were edited, and build.json's split counts edited."""
    import json

    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vlmforge.manifests.writer import file_sha256

    con = duckdb.connect(str(build / "manifest.duckdb"))
    key = con.execute("SELECT min(key) FROM samples").fetchone()[0]
    con.execute("UPDATE samples SET source_id = 'edited' WHERE key = ?", [key])
    con.close()
    [line] = _problems(build)
    assert line.startswith("manifest.duckdb: table samples disagrees with the manifest parts (1 row(s) only in "
                           f"manifest.duckdb, 1 only in the manifest parts; e.g. key {key}); one of them was edited")
    r = run("manifest", "reindex", build)
    assert r.returncode == 0 and run("verify", build).returncode == 0

    part = build / "manifest" / "val-000002.parquet"
    old_sha = file_sha256(part)
    t = pq.read_table(part)
    offsets = t.column("offset").to_pylist()
    offsets[1] += 512
    pq.write_table(t.set_column(t.schema.get_field_index("offset"), "offset", pa.array(offsets)), part)
    problems = _problems(build)
    moved = t.column("key").to_pylist()[1]
    assert problems[0] == (f"val-000002.tar: sample {moved}: the manifest places it at byte {offsets[1]} "
                           f"({t.column('sample_bytes')[1]} bytes), the shard at byte {offsets[1] - 512} "
                           f"({t.column('sample_bytes')[1]} bytes)")
    # the part's sha256 names it as the edited file (the index, which holds the built rows, is not blamed)
    assert problems[1:] == [f"manifest/val-000002.parquet: sha256 {file_sha256(part)[:12]}... differs from build.json's "
                            f"{old_sha[:12]}...: the manifest part was edited or replaced"]

    info = json.loads((build / "build.json").read_text())
    info["splits"]["val"]["samples"] += 1
    (build / "build.json").write_text(json.dumps(info))
    assert "build.json: split val records samples 13 (its shards: 12)" in _problems(build)
    info["splits"]["val"]["samples"] -= 1
    info["config"]["jpeg_quality"] = 50  # what the card and report print as the build's config
    (build / "build.json").write_text(json.dumps(info))
    assert any(p.startswith(f"build.json: build id {info['build_id']} is not the hash of its builder, version, "
                            "config, source fingerprint and parents") for p in _problems(build))


def test_a_wide_result_shows_every_column_and_value(coco_build, tmp_path):
    """Before: SELECT * (16+ columns) squeezed into 80 columns showed names a letter wide and cells without
    their values, on a terminal and in a pipe alike."""
    import duckdb

    con = duckdb.connect(str(coco_build.path / "manifest.duckdb"), read_only=True)
    names = [d[0] for d in con.execute("SELECT * FROM samples ORDER BY key LIMIT 1").description]
    row = con.execute("SELECT * FROM samples ORDER BY key LIMIT 1").fetchone()
    con.close()
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "manifest", "query", coco_build.path,
                        "SELECT * FROM samples ORDER BY key LIMIT 2"], capture_output=True, text=True,
                       env={**__import__("os").environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    block = r.stdout.split("row 2")[0]
    cells = {}
    for line in block.splitlines():
        parts = [p.strip() for p in line.split("│")[1:-1]]
        if len(parts) == 2 and parts[0]:
            cells[parts[0]] = parts[1]
    assert list(cells) == names
    for name, value in zip(names, row):
        if value is not None and len(str(value)) < 40:  # longer values fold onto the next lines
            assert cells[name] == str(value), name
    narrow = run("manifest", "query", coco_build.path, "SELECT key, split FROM samples ORDER BY key LIMIT 1")
    assert "┃ key" in narrow.stdout and "row 1" not in narrow.stdout


def test_sql_mistakes_keep_duckdbs_hint(coco_build):
    """Before: the line DuckDB adds ('Did you mean "samples"?', the columns it has) was cut off."""
    one_error_line(run("manifest", "query", coco_build.path, "SELECT key FROM sample"),
                   "query failed: Catalog Error", 'Did you mean "samples"?')
    one_error_line(run("manifest", "query", coco_build.path, "SELECT splt FROM samples"),
                   'Referenced column "splt"', 'Candidate bindings: "split"')
    one_error_line(run("show", coco_build.path, "--where", "splt = 'val'", "--out", "x.png"),
                   "--where did not work", 'Candidate bindings: "split"')


def test_query_csv_writes_lists_and_structs_as_json(coco_build):
    """Before: a list or struct cell was Python's repr (['a', 'b'], {'x': 1}), which no CSV consumer parses."""
    import csv
    import json

    r = run("manifest", "query", coco_build.path, "SELECT ['a', 'b'] AS l, {'x': 1, 'y': 'nan'::DOUBLE} AS s, "
            "'plain' AS t, NULL AS n FROM samples LIMIT 1", "--format", "csv")
    assert r.returncode == 0, r.stderr
    [head, row] = list(csv.reader(io.StringIO(r.stdout)))
    assert head == ["l", "s", "t", "n"]
    assert json.loads(row[0]) == ["a", "b"] and json.loads(row[1]) == {"x": 1, "y": None} and row[2:] == ["plain", ""]


def test_query_table_fetches_only_the_rows_it_shows(coco_build, monkeypatch, capsys):
    """Before: the table format fetched every row into Python to show the first --limit (SELECT * over a
    million rows: a minute and gigabytes), then counted them."""
    from vlmforge.manifests import query

    rel_type = type(coco_build.sql("SELECT 1"))
    fetched = []
    real = rel_type.fetchall

    def counting(self, *a, **k):
        rows = real(self, *a, **k)
        fetched.append(len(rows))
        return rows

    monkeypatch.setattr(rel_type, "fetchall", counting)
    query.run_query(coco_build.path, "SELECT key FROM samples ORDER BY key", "table", None, limit=3)
    assert max(fetched) <= 3
    out, err = capsys.readouterr()
    assert "(12 rows, 3 shown" in err
    keys = sorted(r[0] for r in real(coco_build.sql("SELECT key FROM samples")))
    assert [k for k in keys if k in out] == keys[:3]


def test_json_and_parquet_refuse_two_columns_of_one_name(coco_build, tmp_path):
    """Before: --format json kept one value per name (a self-join's split and split: one dropped without a
    word), and --format parquet wrote a file pyarrow's reader refuses."""
    sql = "SELECT a.key, a.split, b.split FROM samples a JOIN samples b ON a.key = b.key"
    one_error_line(run("manifest", "query", coco_build.path, sql, "--format", "json"),
                   "two columns named 'split'", "AS")
    one_error_line(run("manifest", "query", coco_build.path, sql, "--format", "parquet", "-o", tmp_path / "x.parquet"),
                   "two columns named 'split'")
    assert not (tmp_path / "x.parquet").exists()
    r = run("manifest", "query", coco_build.path, sql + " LIMIT 1", "--format", "csv")
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "key,split,split"


def test_verify_says_which_shards_were_swapped_and_what_build_json_lacks(build):
    """Before: two shards swapped read as two unexplained sha256 differences, and a shard entry of
    build.json without its sha256 ended verify in a KeyError traceback."""
    import json

    a, b = build / "val-000000.tar", build / "val-000001.tar"
    data_a = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data_a)
    problems = _problems(build)
    assert any(p.startswith("val-000000.tar: sha256 ") and p.endswith("(it is build.json's val-000001.tar: shards "
                                                                      "swapped or copied over)") for p in problems)
    assert any(p.startswith("val-000001.tar: sha256 ") and "it is build.json's val-000000.tar" in p for p in problems)
    info = json.loads((build / "build.json").read_text())
    del info["shards"][1]["sha256"]
    (build / "build.json").write_text(json.dumps(info))
    assert "build.json: shard entry val-000001.tar lacks sha256" in _problems(build)


def test_a_table_written_to_a_file_says_it_holds_the_first_rows_only(coco_build, tmp_path):
    """Before: --format table -o FILE wrote the first --limit rows and said nothing of the others."""
    out = tmp_path / "keys.txt"
    r = run("manifest", "query", coco_build.path, "SELECT key FROM samples", "-o", out, "--limit", "2")
    assert r.returncode == 0 and "(12 rows, 2 written; --limit or --format csv for all)" in r.stderr
    assert sum(line.startswith("│") for line in out.read_text().splitlines()) == 2
