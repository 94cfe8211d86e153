"""The built-in Celeb-DF-shaped data: layout, loading, faces found, genuine fakes, resume, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from dfdetect.config import SynthConfig
from dfdetect.data.labels import Label
from dfdetect.data.sources import load_celebdf, parse_celebdf_name
from dfdetect.errors import BadInputError
from dfdetect.synthetic.synth import MANIFEST, make_synthetic_celebdf, plan_videos

TINY = SynthConfig(identities=4, videos_per_identity=1, fakes_per_identity=2, youtube_videos=2, frames=4,
                   frame_size=224, face_size=150, seed=5, test_fraction=0.5)


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_celebdf(tmp_path_factory.mktemp("synth") / "celebdf", TINY)


def test_plan_is_celebdf_shaped_and_holds_identities_out() -> None:
    cfg = SynthConfig()
    specs = plan_videos(cfg, n_photos=2)
    assert len({s.rel for s in specs}) == len(specs) == len(plan_videos(cfg))
    kinds = Counter(s.kind for s in specs)
    assert kinds["real"] == cfg.identities * cfg.videos_per_identity + cfg.youtube_videos
    assert kinds["swap"] > 0 and kinds["self_blend"] > 0
    assert kinds["swap"] + kinds["self_blend"] == cfg.identities * cfg.fakes_per_identity
    test_ids = {s.person for s in specs if s.is_test and s.person.startswith("id")}
    train_ids = {s.person for s in specs if not s.is_test and s.person.startswith("id")}
    assert test_ids and train_ids and not test_ids & train_ids
    for s in specs:
        name = parse_celebdf_name(Path(s.rel).name)
        if s.kind == "swap":
            assert name.source == s.source != name.target == s.person
            assert int(s.source[2:]) % 2 != int(s.person[2:]) % 2  # another photo, not a variant of X's own
        elif s.kind == "self_blend":
            assert name.source == name.target == s.person
        # A fake reuses the scene of the real video it was made from: idX_idY_NNNN <- idX_NNNN.
        if s.kind != "real":
            assert s.scene == f"Celeb-real/{name.target}_{name.index:04d}.mp4"
    assert plan_videos(SynthConfig(seed=1)) != plan_videos(cfg)


def test_dataset_loads_with_identities_and_test_list(tiny: Path) -> None:
    ds = load_celebdf(tiny)
    assert not ds.skipped
    counts = ds.counts()
    assert counts == {"real": 6, "fake": 8, "test": sum(s.is_test for s in plan_videos(TINY, 2))}
    assert 0 < counts["test"] < len(ds)
    fakes = [it for it in ds.items if it.label == Label.FAKE]
    assert all(len(it.groups) == 2 and all(g.startswith("id") for g in it.groups) for it in fakes)
    celeb_real = {it.groups for it in ds.items if it.rel.startswith("Celeb-real/")}
    assert celeb_real == {(f"id{i}",) for i in range(4)}
    lines = (tiny / "List_of_testing_videos.txt").read_text().splitlines()
    assert all(line.split(" ")[0] in ("0", "1") for line in lines)
    assert {line.split(" ")[0] for line in lines} == {"0", "1"}
    manifest = json.loads((tiny / MANIFEST).read_text())
    assert manifest["photos"] == ["skimage:astronaut", "matplotlib:grace_hopper.jpg"]
    assert not list(tiny.rglob(".*.mp4"))  # no temp files left behind


def test_videos_are_h264_with_faces_haar_finds(tiny: Path) -> None:
    haar = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_alt.xml")
    videos = sorted(tiny.rglob("*.mp4"))
    shapes = set()
    found = 0
    for path in videos[::3]:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            assert stream.codec_context.name == "h264"
            shapes.add((stream.width, stream.height, int(stream.average_rate), stream.frames))
        for img in _frames(path)[::2]:
            grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            found += len(haar.detectMultiScale(grey, 1.1, 5, minSize=(128, 128))) > 0
    assert shapes == {(224, 224, 25, 4)}  # reals and fakes share size, fps and length
    assert found >= 0.8 * 2 * len(videos[::3])


@pytest.mark.slow
def test_mtcnn_finds_the_faces_too(tiny: Path) -> None:
    pytest.importorskip("facenet_pytorch")
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu")
    spec = {s.kind: s for s in plan_videos(TINY, 2)}
    for rel in (spec["real"].rel, spec["swap"].rel, spec["self_blend"].rel):
        rgb = _frames(tiny / rel)[1][..., ::-1].copy()
        boxes, probs = mtcnn.detect(rgb)
        assert boxes is not None and probs.max() > 0.9, rel
        assert (boxes[:, 2:] - boxes[:, :2]).max() >= 100  # a large face, not a stray detection


def test_fakes_change_the_face_of_their_real_video(tiny: Path) -> None:
    spec = {s.kind: s for s in plan_videos(TINY, 2)}
    for kind in ("swap", "self_blend"):
        real = np.stack(_frames(tiny / spec[kind].scene)).astype(np.float32)
        fake = np.stack(_frames(tiny / spec[kind].rel)).astype(np.float32)
        diff = np.abs(real - fake).mean(axis=(0, 3))
        h, w = diff.shape
        # The face moves within the middle of the frame; the border strip is background.
        centre = diff[h // 4:3 * h // 4, w // 4:3 * w // 4].mean()
        border = np.concatenate([diff[:12], diff[-12:], diff[:, :12].T, diff[:, -12:].T], axis=None)
        assert centre > 2.0, kind
        assert border.mean() < 0.25 * centre, kind  # H.264 noise only, not a different picture


def test_rerun_reuses_and_regenerates_identically(tiny: Path) -> None:
    real, fake = tiny / "Celeb-real/id0_0000.mp4", next((tiny / "Celeb-synthesis").glob("id0_*.mp4"))
    before = {p: p.read_bytes() for p in (real, fake)}
    real.unlink()
    fake.write_bytes(b"truncated")  # a broken file is not "valid", so it is made again
    (tiny / "Celeb-real/.id1_0000.mp4.dfdetect-tmp-abc123de.mp4").write_bytes(b"")  # a killed run's temp file
    make_synthetic_celebdf(tiny, TINY)
    for p, data in before.items():
        assert p.read_bytes() == data  # same seed, same bytes (H.264 included)
    assert json.loads((tiny / MANIFEST).read_text())["reused"] == len(plan_videos(TINY)) - 2
    assert not list(tiny.rglob(".*.mp4"))
    with pytest.raises(BadInputError, match="other synth settings"):
        make_synthetic_celebdf(tiny, TINY.model_copy(update={"seed": 6}))


def test_seed_changes_the_videos(tmp_path: Path) -> None:
    cfg = TINY.model_copy(update={"identities": 2, "fakes_per_identity": 1, "youtube_videos": 0, "frames": 2})
    a = make_synthetic_celebdf(tmp_path / "a", cfg)
    b = make_synthetic_celebdf(tmp_path / "b", cfg.model_copy(update={"seed": 99}))
    first = "Celeb-real/id0_0000.mp4"
    assert not np.array_equal(_frames(a / first)[0], _frames(b / first)[0])


def _photo_folder(folder: Path) -> Path:
    from matplotlib import cbook
    from skimage import data

    folder.mkdir()
    cv2.imwrite(str(folder / "Eileen_Collins_0001.jpg"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    hopper = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    cv2.imwrite(str(folder / "Grace_Hopper_0001.jpg"), hopper)
    cv2.imwrite(str(folder / "Grace_Hopper_0002.png"), hopper[:, ::-1])
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(folder / "wall.png"), np.full((200, 200, 3), 128, np.uint8))  # no face in it
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_faces_dir_gives_each_identity_its_own_photo(tmp_path: Path) -> None:
    cfg = TINY.model_copy(update={"identities": 3, "fakes_per_identity": 1, "youtube_videos": 0, "frames": 2})
    root = make_synthetic_celebdf(tmp_path / "out", cfg, faces_dir=_photo_folder(tmp_path / "photos"))
    manifest = json.loads((root / MANIFEST).read_text())
    assert sorted(manifest["photos"]) == [
        "Eileen_Collins_0001.jpg", "Grace_Hopper_0001.jpg", "Grace_Hopper_0002.png"]
    assert {v["variant"] for v in manifest["identities"].values()} == {0}
    assert sorted(line.split(":")[-1].strip() for line in manifest["skipped_photos"]) == [
        "cannot read image", "no face found (Haar)"]
    assert len(load_celebdf(root)) == 3 + 3


@pytest.mark.shared
def test_lfw_photos_make_distinct_identities(shared_data: Path, tmp_path: Path) -> None:
    cfg = TINY.model_copy(update={"identities": 5, "fakes_per_identity": 1, "youtube_videos": 1, "frames": 2})
    root = make_synthetic_celebdf(tmp_path / "lfw", cfg, faces_dir=shared_data / "lfw-faces")
    people = json.loads((root / MANIFEST).read_text())["identities"]
    assert len({p["photo"] for p in people.values()}) == 6  # 5 identities + 1 YouTube person, all different
    assert load_celebdf(root).counts()["fake"] == 5


def test_bad_faces_dir_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="face photo folder not found"):
        make_synthetic_celebdf(tmp_path / "out", TINY, faces_dir=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no images"):
        make_synthetic_celebdf(tmp_path / "out", TINY, faces_dir=tmp_path / "empty")


def test_cli_synth(tmp_path: Path) -> None:
    from dfdetect.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--faces", str(tmp_path / "nope")])
    assert res.exit_code == 1
    assert "face photo folder not found" in res.output and "Traceback" not in res.output
    assert "synth" not in res.output.replace(str(tmp_path), "")  # failed before the progress bar
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--faces", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "no images" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--identities", "1"])
    assert res.exit_code == 1 and "--identities" in res.output
    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "ok"), "--identities", "2",
                              "--videos-per-identity", "1", "--fakes-per-identity", "1", "--youtube", "0",
                              "--frames", "2", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "synth: 4 videos (2 real, 2 fake" in res.output
