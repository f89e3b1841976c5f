"""Publishing to the Hub and pulling back, with no network: the plan, the staged repo layout, the
card, loading it with `datasets`, the resume logic against a stand-in for the Hub's API, the token."""

import fnmatch
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import yaml

import vlmforge
from vlmforge import hub
from vlmforge.errors import UserError
from vlmforge.manifests.read import open_build
from vlmforge.manifests.verify import verify_build

from tests.helpers import build_files
from tests.report.tiny_occlusion import build_tiny_occlusion

TOKEN = "hf_NeverShowThisToken0123456789abcdef"


@pytest.fixture(scope="module")
def occ(tmp_path_factory, sample_coco):
    """Occlusion-like build: train 6 samples + 2 rejects, val 4; members jpg, mask.png, orig.jpg, json."""
    return build_tiny_occlusion(sample_coco, tmp_path_factory.mktemp("occ"), max_samples_per_shard=3)


@pytest.fixture(scope="module")
def staged(occ, tmp_path_factory):
    """The repo folder staged with small shards and folders, so re-packing and chunking both happen."""
    stage_dir = tmp_path_factory.mktemp("stage")
    plan = hub.plan_publish(occ, target_shard_bytes=200_000, max_files_per_folder=2)
    hub.stage(plan, stage_dir, "lab/occ", quiet=True)
    return plan, stage_dir / "repo"


def _sample_order(b):
    """(split, shard, offset, sample_bytes) of every sample in build order."""
    out = []
    for s in b.info["shards"]:
        t = pq.read_table(b.path / "manifest" / s["shard"].replace(".tar", ".parquet"), columns=["offset", "sample_bytes"])
        out += [(s["split"], s["shard"], o, n) for o, n in zip(t.column("offset").to_pylist(), t.column("sample_bytes").to_pylist())]
    return out


def test_plan_repacks_greedily_and_keeps_folders_small(occ, staged):
    plan, repo = staged
    order = _sample_order(occ)
    # Pieces, read in order, are exactly the build's samples in order, none lost or repeated.
    flat = []
    for s in plan.shards:
        for p in s.pieces:
            flat.append((s.split, p.shard, p.start, p.end, p.samples))
    walked = []
    for split, shard, start, end, n in flat:
        for (sp, sh, off, size) in order:
            if sh == shard and start <= off < end:
                walked.append((sp, sh, off, size))
        assert split == shard.split("-")[0]
    assert walked == order
    by_split = {}
    for s in plan.shards:
        by_split.setdefault(s.split, []).append(s)
    for split, shards in by_split.items():
        for a, b in zip(shards, shards[1:]):
            # greedy: a shard is closed only when the next sample would push it past the target
            first_of_b = next(size for (sp, sh, off, size) in order if sh == b.pieces[0].shard and off == b.pieces[0].start)
            assert a.data_bytes + first_of_b > 200_000
        for s in shards:
            assert s.data_bytes <= 200_000 or s.samples == 1
    assert sum(s.samples for s in plan.shards) == len(occ) == 10
    # at most 2 files per folder; the split with 3 shards moved into numbered folders
    folders = {}
    for p in repo.rglob("*"):
        if p.is_file():
            folders.setdefault(p.parent, []).append(p)
    assert all(len(v) <= 2 for k, v in folders.items() if k != repo)
    assert plan.data_files == {"train": "data/train/*/*.tar", "val": "data/val/*.tar"}
    assert sorted(p.relative_to(repo).as_posix() for p in (repo / "data").rglob("*.tar")) == [
        "data/train/0000/train-000000.tar", "data/train/0000/train-000001.tar", "data/train/0001/train-000002.tar",
        "data/val/val-000000.tar", "data/val/val-000001.tar"]
    for s in plan.shards:  # sizes announced by the plan are the sizes written
        assert (repo / s.path).stat().st_size == s.bytes


def test_card_yaml_and_datasets_load_the_published_layout(occ, staged, tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    plan, repo = staged
    text = (repo / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["pretty_name"] == "vlmforge occlusion 0.0.1" and meta["license"] == "unknown"
    assert meta["size_categories"] == ["n<1K"] and "vlmforge" in meta["tags"] and meta["task_categories"]
    [config] = meta["configs"]
    assert config["config_name"] == "default"
    data_files = {d["split"]: d["path"] for d in config["data_files"]}
    assert data_files == {"train": "data/train/*/*.tar", "val": "data/val/*.tar"}
    card = DatasetCard(text)  # the Hub's own parser accepts it
    assert card.data.configs[0]["config_name"] == "default"
    body = text.split("---\n", 2)[2]
    assert occ.build_id in body and "| train | 6 | 2 | 3 |" in body and "| val | 4 | 0 | 2 |" in body
    assert "| refrigerator | 3 |" in body and "| object_too_large | 1 |" in body
    assert "### Rejects by reason\n\n| reason | rejects |" in body and "inputs" not in body.split("## Fields")[0]
    assert "`mask_png` | image | `<key>.mask.png`" in body
    assert "What is hidden behind the grey box?" in body and '"keep_original": true' in body

    # 1) the card's own data_files, as `load_dataset("webdataset", data_files=...)` takes them
    ds = load_dataset("webdataset", data_files={k: str(repo / v) for k, v in data_files.items()},
                      cache_dir=str(tmp_path / "hf1"))
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 6, "val": 4}
    for name in ds["train"].column_names:
        assert name == name.lower() and "." not in name
    assert set(ds["train"].column_names) == {"jpg", "json", "mask_png", "orig_jpg", "__key__", "__url__"}
    keys = [r[0] for r in occ.sql("SELECT key FROM samples WHERE split = 'train' ORDER BY shard, \"offset\"").fetchall()]
    assert ds["train"]["__key__"] == keys

    # 2) the folder as the Hub serves it: the card's configs and declared features apply
    ds2 = load_dataset(str(repo), cache_dir=str(tmp_path / "hf2"))
    assert {k: v.num_rows for k, v in ds2.items()} == {"train": 6, "val": 4}
    row = ds2["val"][0]
    mask = row["mask_png"]
    assert mask.mode == "L" and mask.size == (480, 360)
    want = next(s for s in occ.samples("val") if s["__key__"] == row["__key__"])
    assert mask.tobytes() == __import__("PIL.Image", fromlist=["Image"]).open(
        __import__("io").BytesIO(want["mask.png"])).tobytes()
    assert row["json"]["label"] == want["json"]["label"] and row["json"]["box"] == want["json"]["box"]


def test_card_webdataset_snippet_says_which_fields_stay_bytes(staged):
    """Before: the card's `.decode("pil")` snippet implied every image decodes, but a renamed image
    field (mask_png: no dot left) reaches the user as bytes."""
    import glob
    import io

    import webdataset as wds
    from PIL import Image

    plan, repo = staged
    text = (repo / "README.md").read_text()
    assert 'renamed image fields (`mask_png`, `orig_jpg`) stay bytes' in text
    assert 'PIL.Image.open(io.BytesIO(sample["mask_png"]))' in text
    ds = wds.WebDataset(sorted(glob.glob(str(repo / "data" / "val" / "*.tar"))), shardshuffle=False).decode("pil")
    sample = next(iter(ds))
    assert isinstance(sample["jpg"], Image.Image) and isinstance(sample["mask_png"], bytes)
    assert Image.open(io.BytesIO(sample["mask_png"])).mode in ("1", "L")


def test_pull_restores_the_build_byte_for_byte(occ, staged, tmp_path):
    _, repo = staged
    dest = hub.restore_build(repo, tmp_path / "out")
    assert dest == tmp_path / "out" / "occlusion" / "0.0.1"
    fa, fb = build_files(occ.path), build_files(dest)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)
    pulled = open_build(dest)
    assert verify_build(pulled, quiet=True) == []
    assert pulled.sql("SELECT count(*) FROM rejects").fetchall()[0][0] == 2
    # through the CLI, from a local clone of the repo
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "pull", str(repo), "--out", str(tmp_path / "cli")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "10 samples verified" in r.stderr
    # a damaged published shard is caught, not restored silently
    bad = tmp_path / "bad"
    import shutil
    shutil.copytree(repo, bad)
    victim = bad / "data" / "val" / "val-000000.tar"
    raw = bytearray(victim.read_bytes())
    raw[3000] ^= 1
    victim.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="sha256"):
        hub.restore_build(bad, tmp_path / "out2")
    assert list((tmp_path / "out2" / "occlusion").iterdir()) == []  # no half-restored 0.0.1.pulling left


def test_pull_of_an_incomplete_repo_is_one_error_line(staged, tmp_path):
    """A published shard or manifest part missing from the download is named, not a traceback."""
    import shutil

    _, repo = staged
    pub = json.loads((repo / "publish.json").read_text())
    for victim in (pub["shards"][-1]["path"], next(p for p in pub["manifest"] if p.endswith(".rejects.parquet"))):
        bad = tmp_path / victim.replace("/", "_")
        shutil.copytree(repo, bad)
        (bad / victim).unlink()
        r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "pull", str(bad), "--out", str(tmp_path / "out")],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("error: ") and victim in r.stderr
        assert not (tmp_path / "out").exists()


def test_pull_says_what_a_local_path_is_not(staged, tmp_path):
    """Before: --revision was ignored silently for a local clone (the checked-out files were restored
    whatever revision was asked), and a mistyped local path was called 'not a Hub repo id'."""
    _, repo = staged
    with pytest.raises(UserError, match="local folder, read as it is: --revision applies to a Hub repo"):
        hub.pull(str(repo), revision="9.9.9", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    for path in (str(tmp_path / "no" / "such"), "./nothere", str(repo / "README.md")):
        with pytest.raises(UserError, match="is not a folder .* nor a Hub repo id"):
            hub.pull(path, out=tmp_path / "out")


def test_pull_into_a_path_under_a_file_is_one_error_line(staged, tmp_path):
    """Before: NotADirectoryError tracebacks; with --overwrite a file in the target's place would be removed."""
    _, repo = staged
    taken = tmp_path / "taken"
    taken.write_text("")
    with pytest.raises(UserError, match="cannot create the pull folder"):
        hub.pull(str(repo), out=taken)
    (tmp_path / "out" / "occlusion").mkdir(parents=True)
    (tmp_path / "out" / "occlusion" / "0.0.1").write_text("mine")
    with pytest.raises(UserError, match="0.0.1 is a file; the pulled build needs a folder"):
        hub.pull(str(repo), out=tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "occlusion" / "0.0.1").read_text() == "mine"


def test_pull_of_a_truncated_published_shard_says_so(staged, tmp_path):
    """Before: 'shorter than its manifest says', though for a pull it is publish.json that says."""
    import shutil

    _, repo = staged
    bad = tmp_path / "bad"
    shutil.copytree(repo, bad)
    victim = bad / json.loads((bad / "publish.json").read_text())["shards"][0]["path"]
    victim.write_bytes(victim.read_bytes()[:20_000])
    with pytest.raises(UserError, match="is shorter than recorded .*publish.json.*truncated"):
        hub.restore_build(bad, tmp_path / "out")


@pytest.mark.parametrize("where", ["build.json shard", "build.json builder", "publish.json manifest"])
def test_pull_refuses_paths_outside_its_folders(staged, tmp_path, where):
    """Before: a crafted build.json (shard '../../x.tar', builder '../..') made pull write outside --out,
    and a crafted publish.json made it copy any readable file into the build."""
    import shutil

    _, repo = staged
    bad = tmp_path / "bad"
    shutil.copytree(repo, bad)
    info = json.loads((bad / "build.json").read_text())
    pub = json.loads((bad / "publish.json").read_text())
    if where == "build.json shard":
        info["shards"][0]["shard"] = "../../escaped.tar"
    elif where == "build.json builder":
        info["builder"] = "../.."
    else:
        pub["manifest"][0] = "../../../../etc/hostname"
    (bad / "build.json").write_text(json.dumps(info))
    (bad / "publish.json").write_text(json.dumps(pub))
    with pytest.raises(UserError, match="names a path outside its folder"):
        hub.restore_build(bad, tmp_path / "out" / "deep")
    assert not (tmp_path / "escaped.tar").exists() and not (tmp_path / "out").exists()


def test_unchanged_shards_are_linked_not_copied(tmp_path):
    b = vlmforge.build("copy", "coco", out=tmp_path / "b")  # the embedded sample; fields jpg and json only
    plan = hub.plan_publish(b)
    assert plan.rename == {} and len(plan.shards) == 1 and plan.data_files == {"val": "data/val/*.tar"}
    hub.stage(plan, tmp_path / "stage", "lab/copy", quiet=True)
    published = tmp_path / "stage" / "repo" / plan.shards[0].path
    assert published.read_bytes() == b.shards()[0].read_bytes()
    assert os.stat(published).st_ino == os.stat(b.shards()[0]).st_ino
    dest = hub.restore_build(tmp_path / "stage" / "repo", tmp_path / "pulled")
    assert verify_build(open_build(dest), quiet=True) == []


def test_field_names_are_lowered_and_undotted():
    assert hub.hub_field("mask.png") == "mask_png" and hub.hub_field("Orig.JPG") == "orig_jpg"
    assert hub.field_map(["jpg", "json", "mask.png"]) == {"jpg": "jpg", "json": "json", "mask.png": "mask_png"}
    with pytest.raises(UserError, match="both be published"):
        hub.field_map(["mask.png", "mask_png"])
    assert [hub.size_category(n) for n in (0, 999, 1000, 12_345, 2_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"]
    # beyond 1B the Hub has buckets of its own ('n>1B' is none of its values)
    assert [hub.size_category(n) for n in (2 * 10**9, 5 * 10**12)] == ["1B<n<10B", "n>1T"]


def test_dry_run_makes_no_network_request(occ, tmp_path, monkeypatch, capsys):
    def refuse(*a, **k):
        raise AssertionError("network access during a dry run")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = hub.publish(occ.path, "lab/occ", dry_run=True, stage_dir=tmp_path / "st", target_shard_bytes=200_000)
    assert out["dry_run"]
    repo = tmp_path / "st" / "repo"
    assert (repo / "README.md").exists() and json.loads((repo / "publish.json").read_text())["build_id"] == occ.build_id
    assert not (repo / "data").exists()  # a dry run plans; it copies no shard
    captured = capsys.readouterr()
    assert "data/train/" in captured.out and "mask.png -> mask_png" in captured.out
    assert TOKEN not in captured.out + captured.err


class FakeHub:
    """Stands in for `huggingface_hub.HfApi` (the calls publish makes), keeping files in memory.
    `fail_after=n` drops the connection after n more files, like a network failure mid-upload."""

    LFS = ("*.tar", "*.parquet")

    def __init__(self, exists: bool = False, private: bool = False, role: str = "write"):
        self.exists, self.private, self.role = exists, private, role
        self.files: dict[str, bytes] = {}
        self.commits: dict[str, dict[str, bytes]] = {}
        self.head = self._commit()
        self.tags: dict[str, str] = {}
        self.branches = ["main"]
        self.fail_after: int | None = None
        self.written: list[str] = []

    def _commit(self) -> str:
        oid = hashlib.sha1(json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in self.files.items())).encode()).hexdigest()
        self.commits[oid] = dict(self.files)
        self.head = oid
        return oid

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        assert repo_type == "dataset" and exist_ok
        if not self.exists:  # as on the Hub, an existing repo keeps its visibility
            self.exists, self.private = True, private

    def whoami(self):
        return {"name": "me", "orgs": [{"name": "lab"}], "auth": {"accessToken": {"role": self.role}}}

    def repo_info(self, repo_id, repo_type):
        import httpx
        from huggingface_hub.errors import RepositoryNotFoundError

        if not self.exists:
            url = f"https://huggingface.co/api/datasets/{repo_id}"
            raise RepositoryNotFoundError("404 Client Error", response=httpx.Response(404, request=httpx.Request("GET", url)))
        return SimpleNamespace(id=repo_id, private=self.private)

    def list_repo_refs(self, repo_id, repo_type):
        return SimpleNamespace(tags=[SimpleNamespace(name=k, target_commit=v) for k, v in self.tags.items()],
                               branches=[SimpleNamespace(name=b, target_commit=self.head) for b in self.branches])

    def hf_hub_download(self, repo_id, filename, repo_type, revision):
        path = Path(os.environ["FAKE_HUB_TMP"]) / f"{revision}-{filename}"
        path.write_bytes(self.commits[self.tags.get(revision, revision)][filename])
        return str(path)

    def list_repo_tree(self, repo_id, repo_type, revision, recursive):
        files = self.commits[self.tags.get(revision, revision)] if revision else self.files
        for path, data in sorted(files.items()):
            lfs = SimpleNamespace(sha256=hashlib.sha256(data).hexdigest()) if any(fnmatch.fnmatch(path, p) for p in self.LFS) else None
            yield SimpleNamespace(path=path, size=len(data), blob_id=hub.git_blob_sha1(data), lfs=lfs)

    def upload_folder(self, repo_id, folder_path, repo_type, commit_message, delete_patterns):
        root = Path(folder_path)
        local = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
        for path in [p for p in self.files if any(fnmatch.fnmatch(p, d) for d in delete_patterns) and p not in local]:
            del self.files[path]
        for path, p in local.items():
            data = p.read_bytes()
            if self.files.get(path) == data:
                continue  # the Hub skips files it already holds
            if self.fail_after is not None and len(self.written) >= self.fail_after:
                self._commit()  # what was committed so far stays
                raise ConnectionError(f"connection reset while sending {path} (Authorization: Bearer {TOKEN})")
            self.files[path] = data
            self.written.append(path)
        return SimpleNamespace(oid=self._commit())

    def create_tag(self, repo_id, tag, revision, repo_type, tag_message):
        assert tag not in self.tags
        self.tags[tag] = revision

    def delete_tag(self, repo_id, tag, repo_type):
        del self.tags[tag]


def test_upload_resumes_after_a_failure_and_tags(occ, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("FAKE_HUB_TMP", str(tmp_path))
    fake = FakeHub()
    fake.fail_after = 4
    stage_dir = tmp_path / "stage"
    with pytest.raises(UserError) as err:
        hub.publish(occ.path, "lab/occ", api=fake, stage_dir=stage_dir, target_shard_bytes=200_000, quiet=True)
    assert "run the same command again" in str(err.value) and TOKEN not in str(err.value)
    assert len(fake.written) == 4 and not fake.tags
    staged_once = (stage_dir / hub.STAGE_LOG).read_text().splitlines()

    fake.fail_after = None
    before = len(fake.written)
    result = hub.publish(occ.path, "lab/occ", api=fake, stage_dir=stage_dir, target_shard_bytes=200_000, quiet=True)
    repo = stage_dir / "repo"
    local = {p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert fake.files == local  # the Hub now holds exactly the staged repo
    assert result["uploaded"] == len(local) - 4 == len(fake.written) - before  # only what was missing
    assert (stage_dir / hub.STAGE_LOG).read_text().splitlines() == staged_once  # no shard staged twice
    assert fake.tags == {"0.0.1": result["commit"]} and result["commit"] == fake.head

    # again: nothing to send, the tag already marks this build
    again = hub.publish(occ.path, "lab/occ", api=fake, stage_dir=stage_dir, target_shard_bytes=200_000, quiet=True)
    assert again["uploaded"] == 0 and fake.tags == {"0.0.1": result["commit"]}
    # a new layout of the same build replaces the old shards on the Hub (no stale file left behind)
    hub.publish(occ.path, "lab/occ", api=fake, stage_dir=tmp_path / "stage2", quiet=True)
    assert sorted(p for p in fake.files if p.startswith("data/")) == ["data/train/train-000000.tar", "data/val/val-000000.tar"]
    # another build may not take a tag that marks this one
    other = vlmforge.build("copy", "coco", out=tmp_path / "copy")
    with pytest.raises(UserError, match="already marks build"):
        hub.publish(other.path, "lab/occ", api=fake, stage_dir=tmp_path / "stage3", revision="0.0.1", quiet=True)
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err


def test_a_damaged_build_is_not_published(occ, tmp_path, monkeypatch):
    """Before: a shard with a flipped byte was staged (linked as it is) and uploaded, its publish.json
    naming build.json's sha256; only a later `pull` found out."""
    import shutil

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    b = tmp_path / "b"
    shutil.copytree(occ.path, b)
    victim = b / occ.info["shards"][-1]["shard"]
    raw = bytearray(victim.read_bytes())
    raw[3000] ^= 1
    victim.write_bytes(bytes(raw))
    fake = FakeHub()
    with pytest.raises(UserError, match=f"fails verification, so it is not published: {victim.name}: sha256"):
        hub.publish(b, "lab/occ", api=fake, stage_dir=tmp_path / "stage", quiet=True)
    assert fake.files == {} and not (tmp_path / "stage").exists()


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_build_missing_a_shard_is_one_error_line(occ, tmp_path, monkeypatch, dry_run):
    """Before: `publish` (with or without --dry-run) of a build whose shard was deleted ended in a
    FileNotFoundError traceback from planning, before verification could refuse it."""
    import shutil

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    b = tmp_path / "b"
    shutil.copytree(occ.path, b)
    victim = b / occ.info["shards"][0]["shard"]
    victim.unlink()
    fake = FakeHub()
    with pytest.raises(UserError, match=f"fails verification, so it is not published: {victim.name}: missing"):
        hub.publish(b, "lab/occ", api=fake, stage_dir=tmp_path / "stage", dry_run=dry_run, quiet=True)
    assert fake.files == {} and not (tmp_path / "stage").exists()


def test_an_invalid_tag_is_refused_before_staging(occ, tmp_path, monkeypatch):
    """Before: a --revision git cannot take as a tag was accepted, staged and uploaded, and failed only
    at create_tag, after the whole upload."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake = FakeHub()
    for tag in ("release 1", "v1..2", "1.2.0.lock", "x/"):
        for dry_run in (True, False):
            with pytest.raises(UserError, match="is not a valid tag name"):
                hub.publish(occ.path, "lab/occ", api=fake, revision=tag, dry_run=dry_run,
                            stage_dir=tmp_path / "stage", quiet=True)
    assert fake.files == {} and not (tmp_path / "stage").exists()
    for tag in ("1.2.0", "v1.2.0-coco", "exp/occ_2+3"):
        hub.check_tag(tag)


def test_a_build_without_samples_is_not_published(tmp_path):
    """Before: it was staged with a card whose configs named no data file and whose loading example
    read ds["train"][0] from a dataset with no split."""
    b = vlmforge.build("copy", "build", out=tmp_path / "b", source_options={
        "path": str(vlmforge.build("copy", "coco", out=tmp_path / "a").path), "where": "key = 'nothing'"})
    assert len(b) == 0
    with pytest.raises(UserError, match="has no samples and no rejects: its source gave no record .*; there is nothing to publish"):
        hub.publish(b.path, "lab/empty", dry_run=True, stage_dir=tmp_path / "stage")
    assert not (tmp_path / "stage").exists()


def test_a_stage_under_a_file_is_one_error_line(occ, tmp_path):
    """Before: NotADirectoryError traceback (dry run or not)."""
    taken = tmp_path / "taken"
    taken.write_text("")
    for stage in (taken, taken / "below"):
        r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "publish", str(occ.path), "--repo", "lab/occ",
                            "--dry-run", "--stage", str(stage)], capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1] == f"error: --stage {stage}: {taken} is a file; the staged repo needs a folder"


def test_staging_resumes_after_a_crash(occ, tmp_path, monkeypatch):
    plan = hub.plan_publish(occ, target_shard_bytes=200_000)
    real = hub._write_hub_shard
    calls = []

    def crash_on_third(plan_, shard, target):
        calls.append(shard.path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(plan_, shard, target)

    monkeypatch.setattr(hub, "_write_hub_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        hub.stage(plan, tmp_path / "a", "lab/occ", quiet=True)
    calls.clear()
    monkeypatch.setattr(hub, "_write_hub_shard", lambda *a: calls.append(a[1].path) or real(*a))
    staged = hub.stage(plan, tmp_path / "a", "lab/occ", quiet=True)
    assert calls == [s.path for s in plan.shards[2:]]  # the two finished shards were kept
    assert [v["reused"] for v in staged.values()] == [True, True] + [False] * (len(plan.shards) - 2)
    hub.stage(plan, tmp_path / "b", "lab/occ", quiet=True)
    ra, rb = tmp_path / "a" / "repo", tmp_path / "b" / "repo"
    files_a = {p.relative_to(ra): p.read_bytes() for p in ra.rglob("*") if p.is_file()}
    files_b = {p.relative_to(rb): p.read_bytes() for p in rb.rglob("*") if p.is_file()}
    assert files_a == files_b


def test_cli_errors_never_show_the_token(occ, tmp_path):
    env = {**os.environ, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1", "VLMFORGE_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "publish", str(occ.path), "--repo", "lab/occ", "-q",
                        "--stage", str(tmp_path / "stage")], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Hub to publish lab/occ (OfflineModeIsEnabled")
    assert TOKEN not in r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "publish", str(occ.path), "--repo", "not a repo"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "NAMESPACE/NAME" in r.stderr


def test_text_only_samples_mixed_with_images(tmp_path):
    from datasets import load_dataset
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (16, 12), (200, 10, 10)).save(tmp_path / "img" / "a.png")
    recs = [{"id": "t1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
            {"id": "v1", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]}]
    (tmp_path / "chat.json").write_text(json.dumps(recs))
    b = vlmforge.build("copy", "llava-json", out=tmp_path / "b",
                       source_options={"json": str(tmp_path / "chat.json"), "image_root": str(tmp_path / "img")})
    first = next(b.samples())
    assert first["__key__"] == "t1" and "jpg" not in first  # the first sample has no image
    plan = hub.plan_publish(b)
    assert set(plan.fields) == {"json", "jpg"}  # llava-json stores RGB JPEG whatever the source format
    hub.stage(plan, tmp_path / "st", "lab/chat", quiet=True)
    ds = load_dataset(str(tmp_path / "st" / "repo"), cache_dir=str(tmp_path / "hf"), split="train")
    rows = {r["__key__"]: r for r in ds}
    assert rows["t1"]["jpg"] is None and rows["v1"]["jpg"].size == (16, 12)


def test_pull_help_names_both_exit_codes():
    """A shard that does not rebuild is a UserError (exit 2); a failed verify afterwards exits 1."""
    from typer.testing import CliRunner

    from vlmforge.cli import app

    r = CliRunner().invoke(app, ["pull", "--help"], terminal_width=200)
    text = " ".join(r.output.replace("│", " ").split())
    assert r.exit_code == 0 and "Exit 1 when" in text and "2 when it cannot be fetched or rebuilt" in text


def test_a_license_the_hub_does_not_know_is_refused_before_staging(occ, tmp_path, monkeypatch):
    """Before: any --license went into the card's YAML; the Hub refuses such a README.md, so the
    publish failed only after the whole upload."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake = FakeHub()
    for bad, hint in (("CC-BY-4.0", "did you mean cc-by-4.0?"), ("apache2", "did you mean apache-2.0"),
                      ("cc-by-nc-4", "did you mean cc-by-nc-4.0"), ("my own terms", "or 'other' for a license")):
        for dry_run in (True, False):
            with pytest.raises(UserError, match="is not a Hugging Face Hub license id") as err:
                hub.publish(occ.path, "lab/occ", api=fake, license=bad, dry_run=dry_run,
                            stage_dir=tmp_path / "stage", quiet=True)
            assert hint in str(err.value)
    assert fake.files == {} and not (tmp_path / "stage").exists()
    out = hub.publish(occ.path, "lab/occ", license="cc-by-nc-sa-4.0", dry_run=True, stage_dir=tmp_path / "ok")
    meta = yaml.safe_load((out["stage"] / "repo" / "README.md").read_text().split("---")[1])
    assert meta["license"] == "cc-by-nc-sa-4.0"
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "publish", str(occ.path), "--repo", "lab/occ",
                        "--dry-run", "--license", "cc-by-4", "--stage", str(tmp_path / "cli")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "did you mean cc-by-4.0" in r.stderr


def test_a_split_name_datasets_refuses_is_loaded_under_a_name_it_takes(occ, tmp_path):
    """Before: a build with split 'val-hard' (build split --splits val-hard=...) was published with that
    split name in the card, and the card's own `load_dataset(...)` failed ('Split name should match
    ...: dashes are not allowed')."""
    from datasets import load_dataset

    b = vlmforge.build("split", "build", out=tmp_path / "b", source_options={"path": str(occ.path)},
                       splits="train=0.5,val-hard=0.5")
    plan = hub.plan_publish(b)
    hub.stage(plan, tmp_path / "st", "lab/split", quiet=True)
    repo = tmp_path / "st" / "repo"
    text = (repo / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert {d["split"]: d["path"] for d in meta["configs"][0]["data_files"]} == {
        "train": "data/train/*.tar", "val_hard": "data/val-hard/*.tar"}
    assert "`val-hard` as `val_hard`" in text
    ds = load_dataset(str(repo), cache_dir=str(tmp_path / "hf"))
    counts = dict(b.sql("SELECT split, count(*) FROM samples GROUP BY 1").fetchall())
    assert {k: v.num_rows for k, v in ds.items()} == {"train": counts["train"], "val_hard": counts["val-hard"]}
    dest = hub.pull(str(repo), out=tmp_path / "pulled")  # the build itself keeps its own split name
    assert build_files(dest) == build_files(b.path)
    clash = vlmforge.build("split", "build", out=tmp_path / "c", source_options={"path": str(occ.path)},
                           splits="val_hard=0.5,val-hard=0.5")
    with pytest.raises(UserError, match="splits 'val-hard' and 'val_hard' would both load as 'val_hard'|"
                                         "splits 'val_hard' and 'val-hard' would both load as 'val_hard'"):
        hub.plan_publish(clash)


def test_card_names_what_a_derived_build_read_of_each_parent(occ, tmp_path):
    """A mix's card named its parents but not which of their splits it read nor how many samples it took
    of each: the card of a mix of a split build's train split read as if it held the test split too."""
    half = vlmforge.build("split", "build", out=tmp_path / "s", source_options={"path": str(occ.path)},
                          splits="train=0.5,test=0.5")
    mix = vlmforge.build("mix", "builds", out=tmp_path / "m", take=["all", "1"],
                         source_options={"paths": [str(occ.path), str(half.path)], "splits": ["train"]})
    hub.publish(mix.path, "lab/mix", dry_run=True, stage_dir=tmp_path / "st", quiet=True)
    card = (tmp_path / "st" / "repo" / "README.md").read_text()
    table = card.split("### Parent builds\n", 1)[1].split("\n\n", 1)[0].strip().splitlines()
    assert table[0] == "| build id | builder | version | its parents | splits read | samples taken |"
    rows = {r.split(" | ")[0].strip("| "): r for r in table[2:]}
    n_train = occ.info["splits"]["train"]["samples"]
    assert rows[occ.build_id] == f"| {occ.build_id} | occlusion | {occ.info['version']} |  | train | {n_train} |"
    assert rows[half.build_id] == f"| {half.build_id} | split | {half.info['version']} | {occ.build_id} | train | 1 |"
    assert len(mix) == n_train + 1


@pytest.fixture
def refusing_hub():
    """A local stand-in for the Hub's HTTP API that answers every request 401, as the Hub answers a bad token."""
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def _reply(self):
            body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_HEAD = _reply

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_wrong_token_is_one_line_before_anything_is_staged(occ, tmp_path, refusing_hub):
    """Before: the whole build was verified and staged, then create_repo's 401 came as a five-line error
    ending 'run the same command again to resume', which cannot help."""
    env = {**os.environ, "HF_TOKEN": TOKEN, "HF_ENDPOINT": refusing_hub, "VLMFORGE_CACHE": str(tmp_path / "cache")}
    env.pop("HF_HUB_OFFLINE", None)
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "publish", str(occ.path), "--repo", "lab/occ", "-q",
                        "--stage", str(tmp_path / "stage")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the Hub refused the token: Invalid user token.") and "nothing was staged" in last
    assert "resume" not in r.stderr and TOKEN not in r.stdout + r.stderr
    assert not (tmp_path / "stage").exists()
    # pull: one line too (was the Hub's five, with a link to MDN)
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "pull", "lab/occ", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: could not download lab/occ: ") and "401" in line and TOKEN not in line


def test_private_is_not_ignored_for_an_existing_public_repo(occ, tmp_path, monkeypatch):
    """Before: create_repo(private=True, exist_ok=True) left an existing public repo public, and the build
    was uploaded there for anyone to read."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("FAKE_HUB_TMP", str(tmp_path))
    public = FakeHub(exists=True, private=False)
    with pytest.raises(UserError, match="lab/occ exists and is public, and --private does not change an existing repo"):
        hub.publish(occ.path, "lab/occ", api=public, private=True, stage_dir=tmp_path / "stage", quiet=True)
    assert public.files == {} and not (tmp_path / "stage").exists()
    new = FakeHub()
    hub.publish(occ.path, "lab/occ", api=new, private=True, stage_dir=tmp_path / "stage", quiet=True)
    assert new.private and "build.json" in new.files
    again = hub.publish(occ.path, "lab/occ", api=new, private=True, stage_dir=tmp_path / "stage", quiet=True)
    assert again["uploaded"] == 0 and new.private
    with pytest.raises(UserError, match="the Hugging Face token is read-only"):
        hub.publish(occ.path, "lab/occ", api=FakeHub(role="read"), stage_dir=tmp_path / "stage2", quiet=True)
    assert not (tmp_path / "stage2").exists()
    # a namespace that is neither the token's user nor one of its organizations: refused before staging
    # (was a 403 from create_repo after the whole build was verified and staged)
    with pytest.raises(UserError, match="the token is me's, who cannot make repos under 'other' .*me, lab"):
        hub.publish(occ.path, "other/occ", api=FakeHub(), stage_dir=tmp_path / "stage3", quiet=True)
    assert not (tmp_path / "stage3").exists()
    hub.publish(occ.path, "me/occ", api=FakeHub(), stage_dir=tmp_path / "stage4", quiet=True)


def test_a_refused_upload_says_so_without_resume_advice(occ, tmp_path, monkeypatch):
    """Before: a 403 (a token without write access to the namespace) read 'run the same command again to
    resume', over five lines."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("FAKE_HUB_TMP", str(tmp_path))
    fake = FakeHub()

    def forbidden(**kwargs):  # what huggingface_hub raises for the Hub's 403, with its message layout
        url = "https://huggingface.co/api/datasets/lab/occ/commit/main"
        raise HfHubHTTPError(f"Client error '403 Forbidden' for url '{url}'\nFor more information check: "
                             "https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/403\n\n"
                             "You don't have the rights to create a dataset under lab",
                             response=httpx.Response(403, request=httpx.Request("POST", url)))

    fake.upload_folder = forbidden
    with pytest.raises(UserError) as err:
        hub.publish(occ.path, "lab/occ", api=fake, stage_dir=tmp_path / "stage", quiet=True)
    text = str(err.value)
    assert text.startswith("the Hub refused the upload to lab/occ (HfHubHTTPError: ") and "\n" not in text
    assert "You don't have the rights" in text and "resume" not in text and text.endswith("write access to lab")


def test_a_revision_naming_a_branch_is_refused_before_staging(occ, tmp_path, monkeypatch):
    """Before: --revision main (or a branch such as dev) was staged and uploaded to main, and only then
    refused as a tag by the Hub, on every rerun; a user who took --revision for the branch to commit to
    found main replaced."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("FAKE_HUB_TMP", str(tmp_path))
    fake = FakeHub(exists=True)
    fake.branches = ["main", "dev"]
    for tag in ("main", "dev", "refs/pr/1"):
        with pytest.raises(UserError, match=f"--revision '{tag}' names a branch of the repo, but --revision is the tag"):
            hub.publish(occ.path, "lab/occ", api=fake, revision=tag, stage_dir=tmp_path / "stage", quiet=True)
    assert fake.files == {} and not fake.tags and not (tmp_path / "stage").exists()
    hub.publish(occ.path, "lab/occ", api=fake, revision="dev-1", stage_dir=tmp_path / "stage", quiet=True)
    assert list(fake.tags) == ["dev-1"]


def test_republishing_a_build_with_a_new_card_moves_its_tag(occ, tmp_path, monkeypatch):
    """Before: publishing the same build again with another --license committed the new card to main, but
    the tag (the revision the card tells users to load) kept the first card and its license."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("FAKE_HUB_TMP", str(tmp_path))
    fake = FakeHub()
    first = hub.publish(occ.path, "lab/occ", api=fake, stage_dir=tmp_path / "stage", quiet=True, license="cc-by-4.0")
    second = hub.publish(occ.path, "lab/occ", api=fake, stage_dir=tmp_path / "stage", quiet=True, license="cc-by-nc-4.0")
    assert second["uploaded"] == 1 and second["commit"] != first["commit"]  # README.md only
    card = fake.commits[fake.tags["0.0.1"]]["README.md"].decode()
    assert yaml.safe_load(card.split("---\n")[1])["license"] == "cc-by-nc-4.0"
    assert fake.tags == {"0.0.1": second["commit"]}
    # the same publish again: nothing uploaded, the tag stays where it is
    third = hub.publish(occ.path, "lab/occ", api=fake, stage_dir=tmp_path / "stage", quiet=True, license="cc-by-nc-4.0")
    assert third["uploaded"] == 0 and fake.tags == {"0.0.1": second["commit"]}
