"""fingerprint_files takes a quick path (string prefix, parts sort) where it can; it must hash exactly
what the plain definition does: Path order, os.path.relpath, file size."""

import hashlib
import os
from pathlib import Path

from vlmforge.sources.base import fingerprint_files


def plain(listed, root):
    h = hashlib.sha256()
    for f in sorted(Path(p) for p in listed):
        rel = os.path.relpath(f, root) if root else f.name
        try:
            size = f.stat().st_size
        except OSError:
            size = -1
        h.update(f"L{rel}\0{size}\0".encode())
    return h.hexdigest()


def test_quick_path_hashes_what_the_definition_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ["a/b.jpg", "a-c/d.jpg", "a/b/c.jpg", "ab.jpg", "A/x.png"]:
        Path("data", name).parent.mkdir(parents=True, exist_ok=True)
        Path("data", name).write_bytes(b"x" * len(name))
    listed = [Path("data", n) for n in ["a/b.jpg", "a-c/d.jpg", "a/b/c.jpg", "ab.jpg", "A/x.png", "gone.jpg"]]
    listed += [tmp_path / "data/a/b.jpg", Path("data/../data/ab.jpg"), Path("elsewhere/e.jpg")]
    for root in [Path("data"), tmp_path / "data", Path("."), Path("data/a"), None]:
        assert fingerprint_files([], listed, root=root) == plain(listed, root), root


def test_image_folder_records_give_paths_relative_to_any_root_spelling(tmp_path, monkeypatch):
    from vlmforge.sources.imagefolder import ImageFolderSource

    (tmp_path / "data/cats").mkdir(parents=True)
    (tmp_path / "data/cats/a.jpg").write_bytes(b"x")
    (tmp_path / "data/cats/sub").mkdir()
    (tmp_path / "data/cats/sub/b.png").write_bytes(b"x")
    monkeypatch.chdir(tmp_path / "data")
    for root in [tmp_path / "data", "../data", ".", str(tmp_path / "data") + "/"]:
        recs = list(ImageFolderSource(root).records("train"))
        assert [r["source_id"] for r in recs] == ["cats/a.jpg", "cats/sub/b.png"], root
        assert [Path(r["file"]).resolve() for r in recs] == [tmp_path / "data/cats/a.jpg", tmp_path / "data/cats/sub/b.png"]
        assert {r["label"] for r in recs} == {"cats"}
