"""Progress reporting: plain lines in logs (stderr not a terminal), nothing at all with quiet."""

import json

import vlmforge
from vlmforge import progress
from vlmforge.export import export_llava


def test_log_lines_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    with progress.progress_bar("shards", total=4) as advance:
        advance(1)
        advance(3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("shards: 1/4 (25%), 0:00 elapsed, about 0:00 left")
    assert lines[1].startswith("shards: 4/4 (100%)") and "left" not in lines[1]
    assert lines[-1].startswith("shards: 4/4 (100%)") and len(lines) == 3  # the closing line


def test_short_work_leaves_the_log_clean(capsys):
    with progress.progress_bar("shards", total=1000) as advance:
        for _ in range(1000):
            advance(1)
    with progress.progress_bar("open-ended") as advance:
        advance(5)
    assert capsys.readouterr().err == ""


def test_quiet_build_and_export_write_nothing(monkeypatch, capfd, tmp_path, sample_coco):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)  # every progress bar that is not disabled writes
    b = vlmforge.build("occlusion", "coco", out=tmp_path / "b", source_options={"coco_root": str(sample_coco)},
                       quiet=True)
    path = export_llava(b, tmp_path / "llava", quiet=True)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert len(json.loads(path.read_text())) == b.sql("SELECT count(*) FROM samples").fetchall()[0][0]
    export_llava(b, tmp_path / "llava2")
    assert "export llava.json: " in capfd.readouterr().err
