"""Crop tables, leakage-free splits, datasets and preprocessing, on tiny data the tests make."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dfdetect.config import FullTrainConfig
from dfdetect.data.crops import CropTable, build_crop_table, group_components, load_label_table, split_table
from dfdetect.data.sources import discover
from dfdetect.data.torch_datasets import CropDataset, PairDataset, balanced_sampler, decode_crops
from dfdetect.data.transforms import augment_crop, preprocess_crops
from dfdetect.errors import NothingUsableError

DC = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


def _img(path: Path, value: int = 100, size: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), value, np.uint8))
    return path


def _celebdf(root: Path, crops: Path, *, frames: int = 3) -> None:
    """Celeb-DF layout (empty mp4 stand-ins: only names matter here) with crops for most videos."""
    reals = [f"id{i}_000{j}" for i in range(8) for j in range(2)]
    fakes = [f"id{i}_id{(i + 1) % 8 if i % 2 == 0 else i - 1}_000{j}" for i in range(8) for j in range(2)]
    for folder, names in (("Celeb-real", reals), ("Celeb-synthesis", fakes)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for n in names:
            (root / folder / f"{n}.mp4").write_bytes(b"")
            for k in range(frames):
                _img(crops / folder / n / f"{k:05d}.png")
    (root / "YouTube-real").mkdir()
    (root / "YouTube-real" / "00001.mp4").write_bytes(b"")  # no crops: must be reported
    (root / "List_of_testing_videos.txt").write_text("1 Celeb-real/id0_0000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n")


def test_build_crop_table_from_celebdf_crops(tmp_path):
    _celebdf(tmp_path / "cdf", tmp_path / "faces", frames=5)
    t = build_crop_table(discover(tmp_path / "cdf"), tmp_path / "faces", frames_per_video=3)
    assert len(t) == 32 * 3 and t.counts()["videos"] == 32
    assert sum("00001" in s and "no face crops" in s for s in t.skipped) == 1
    rows = [i for i, v in enumerate(t.videos) if v == "Celeb-real/id0_0000"]
    assert [t.paths[i].name for i in rows] == ["00000.png", "00002.png", "00004.png"]  # evenly spaced
    assert t.is_test[rows].all() and t.labels[rows].tolist() == [0, 0, 0]
    fake = t.videos.index("Celeb-synthesis/id0_id1_0000")
    assert t.labels[fake] == 1 and t.groups[fake] == ("id0", "id1")


def test_image_folder_is_its_own_crops_and_videos_need_crops(tmp_path):
    for i in range(3):
        _img(tmp_path / "real" / f"r{i}.png")
        _img(tmp_path / "fake" / f"f{i}.jpg")
    t = build_crop_table(discover(tmp_path), None)
    assert len(t) == 6 and t.labels.sum() == 3 and not t.is_test.any()
    (tmp_path / "v" / "real").mkdir(parents=True)
    (tmp_path / "v" / "real" / "a.mp4").write_bytes(b"")
    with pytest.raises(NothingUsableError, match="no face crops"):
        build_crop_table(discover(tmp_path / "v"), None)


def test_load_label_table_seed_file(tmp_path):
    _img(tmp_path / "Celeb-real" / "id3_0001" / "00000.png")
    _img(tmp_path / "Celeb-synthesis" / "id3_id4_0001" / "00000.png")
    lf = tmp_path / "labels.txt"
    lf.write_text("1 Celeb-real/id3_0001/00000.png\n0 Celeb-synthesis/id3_id4_0001/00000.png\n"
                  "0 Celeb-synthesis/missing/00000.png\nnonsense\n")
    t = load_label_table(lf, tmp_path)
    assert t.labels.tolist() == [0, 1]  # seed 1 = real -> internal 0
    assert t.videos == ["Celeb-real/id3_0001", "Celeb-synthesis/id3_id4_0001"]
    assert t.groups[1] == ("id3", "id4") and len(t.skipped) == 2


def _table(n_real: int, n_fake: int, *, groups=None, videos=None, test=None) -> CropTable:
    n = n_real + n_fake
    videos = videos or [f"v{i}" for i in range(n)]
    return CropTable([Path(f"/x/{i}.png") for i in range(n)], np.array([0] * n_real + [1] * n_fake), videos,
                     groups or [(v,) for v in videos], np.zeros(n, bool) if test is None else np.array(test))


def test_random_split_is_seeded_stratified_85_15_and_keeps_test_out():
    test = [False] * 200
    test[0] = test[150] = True
    t = _table(120, 80, test=test)
    tr, va, te = split_table(t, FullTrainConfig(split="random", seed=3))
    assert len(te) == 2 and te.paths == [Path("/x/0.png"), Path("/x/150.png")]
    assert len(tr) + len(va) == 198 and abs(len(va) - 0.15 * 198) <= 1
    assert abs(va.labels.mean() - 80 / 200) < 0.03  # stratified
    assert not set(tr.paths) & set(va.paths) and not set(te.paths) & (set(tr.paths) | set(va.paths))
    _, va2, _ = split_table(t, FullTrainConfig(split="random", seed=3))
    assert va2.paths == va.paths
    _, va3, _ = split_table(t, FullTrainConfig(split="random", seed=4))
    assert va3.paths != va.paths


def _sides(tr: CropTable, va: CropTable) -> tuple[set, set]:
    return {g for gs in tr.groups for g in gs}, {g for gs in va.groups for g in gs}


def test_group_split_celebdf_identities_never_straddle(tmp_path):
    _celebdf(tmp_path / "cdf", tmp_path / "faces", frames=2)
    t = build_crop_table(discover(tmp_path / "cdf"), tmp_path / "faces")
    tr, va, te = split_table(t, FullTrainConfig(split="group", val_fraction=0.25, seed=0))
    assert set(te.videos) == {"Celeb-real/id0_0000", "Celeb-synthesis/id0_id1_0000"}
    g_tr, g_va = _sides(tr, va)
    assert g_tr and g_va and not g_tr & g_va
    assert not set(tr.videos) & set(va.videos)
    assert va.labels.min() == 0 and va.labels.max() == 1  # reals and fakes on both sides
    assert len(tr) + len(va) + len(te) == len(t)


def test_group_components_join_two_identity_fakes():
    comp = group_components(["a", "b", "c", "d"], [("id0",), ("id1",), ("id0", "id1"), ("id2",)])
    assert comp[0] == comp[1] == comp[2] != comp[3]


def test_group_split_one_blob_splits_identities_and_drops_straddlers():
    ids = [f"id{i}" for i in range(10)]
    reals = [(g,) for g in ids for _ in range(3)]
    fakes = [(a, b) for a in ids for b in ids if a != b][:60]  # connects everything
    t = _table(len(reals), len(fakes), groups=reals + fakes)
    tr, va, _ = split_table(t, FullTrainConfig(split="group", seed=1))
    g_tr, g_va = _sides(tr, va)
    assert g_va and not g_tr & g_va
    assert len(tr) + len(va) < len(t) and "dropped" in tr.notes[0]


def test_group_split_dfdc_fakes_stay_with_their_original(shared_data):
    from dfdetect.data.sources import load_csv

    t = build_crop_table(load_csv(shared_data / "dfdc-faces" / "labels.csv"), None)
    tr, va, te = split_table(t, FullTrainConfig(split="group", seed=0))
    g_tr, g_va = _sides(tr, va)
    assert len(te) == 0 and not g_tr & g_va
    assert 0.1 < len(va) / len(t) < 0.2 and 0.3 < va.labels.mean() < 0.7


def test_crop_dataset_normalises_and_flags_unreadable(tmp_path):
    good = _img(tmp_path / "a.png", value=255, size=50)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image")
    t = CropTable([good, bad], np.array([1, 0]), ["a", "b"], [("a",), ("b",)], np.zeros(2, bool))
    ds = CropDataset(t, input_size=16, data_config=DC)
    x, y, ok = ds[0]
    assert x.shape == (3, 16, 16) and torch.allclose(x, torch.full_like(x, 2.0)) and y == 1 and ok == 1
    assert ds[1][2] == 0
    aug = CropDataset(t, input_size=16, data_config=DC, augment=True)
    assert aug[0][0].shape == (3, 16, 16)


def test_sbi_pairs_are_half_real_half_fake_and_seeded(tmp_path):
    paths = [_img(tmp_path / f"r{i}.png", value=50 + i) for i in range(4)]
    t = CropTable(paths, np.zeros(4, int), [f"v{i}" for i in range(4)], [(f"v{i}",) for i in range(4)],
                  np.zeros(4, bool))

    def blend(face, rng, landmarks):  # stand-in for sbi.sbi_blend: a visible, seeded change
        out = face.copy()
        out[: int(rng.integers(2, 10))] = 0
        return face, out

    ds = PairDataset(t, input_size=8, data_config=DC, seed=0, sbi=1.0, blend_fn=blend)
    x, y, ok = ds[1]
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [0.0, 1.0] and ok.tolist() == [1.0, 1.0]
    assert not torch.equal(x[0], x[1])
    assert torch.equal(ds[1][0], x)  # same epoch, same blend
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    _, yb, _ = next(iter(loader))
    assert yb.flatten().mean() == 0.5


def test_preprocess_any_size_channels_last():
    crops = [np.zeros((10, 30, 3), np.uint8), np.full((300, 200, 3), 255, np.uint8), np.zeros((9, 9), np.uint8)]
    x = preprocess_crops(crops, DC, 24)
    assert x.shape == (3, 3, 24, 24) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x[1], torch.full_like(x[1], 2.0)) and torch.allclose(x[0], torch.full_like(x[0], -2.0))


def test_balanced_sampler_draws_classes_equally():
    labels = np.array([0] * 90 + [1] * 10)
    drawn = labels[list(balanced_sampler(labels, seed=0, num_samples=4000))]
    assert 0.45 < drawn.mean() < 0.55


def test_pairs_put_a_fake_with_its_source_real(tmp_path):
    """DFDC-style: a fake's group is its source video, so a real is batched with its own fakes."""
    paths = [_img(tmp_path / f"{i}.png", value=10 * i) for i in range(6)]
    groups = [("a",), ("b",), ("c",), ("a",), ("b",), ("x",)]  # reals a, b, c; fakes of a, b and an orphan
    t = CropTable(paths, np.array([0, 0, 0, 1, 1, 1]), [f"v{i}" for i in range(6)], groups, np.zeros(6, bool))
    ds = PairDataset(t, input_size=8, data_config=DC, seed=0)
    assert ds.partners == [[3], [4], []]
    for epoch in range(3):
        ds.set_epoch(epoch)
        x, _, _ = ds[0]
        assert torch.equal(x[1], CropDataset(t, input_size=8, data_config=DC)[3][0])  # a's fake, every time
    with pytest.raises(NothingUsableError, match="needs fake crops"):
        PairDataset(t.subset([0, 1, 2]), input_size=8, data_config=DC)


def test_crop_lookup_ignores_a_killed_runs_temp_files(tmp_path):
    """Regression: an atomic write's temp file (.00001.png.x1y2.png) left by a SIGKILL joined the crops."""
    _celebdf(tmp_path / "cdf", tmp_path / "faces", frames=2)
    _img(tmp_path / "faces" / "Celeb-real" / "id0_0000" / ".00001.png.k2j3.png")
    t = build_crop_table(discover(tmp_path / "cdf"), tmp_path / "faces")
    rows = [t.paths[i].name for i, v in enumerate(t.videos) if v == "Celeb-real/id0_0000"]
    assert rows == ["00000.png", "00001.png"]


@pytest.mark.parametrize("n_real, n_fake", [(3, 3), (2, 5), (6, 6)])
def test_random_split_of_a_tiny_table_does_not_crash(n_real, n_fake):
    """Regression: 6 crops, seed protocol: sklearn refused to stratify a 1-row validation set (ValueError
    traceback from `dfdetect train`)."""
    tr, va, _ = split_table(_table(n_real, n_fake), FullTrainConfig(split="random", seed=0))
    assert len(tr) > 0 and len(va) > 0 and len(tr) + len(va) == n_real + n_fake


def test_group_split_of_a_tiny_table_does_not_crash():
    """Regression: 4 real + 4 fake crops in 8 groups: StratifiedGroupKFold(n_splits=7) raised ValueError."""
    tr, va, _ = split_table(_table(4, 4), FullTrainConfig(split="group", seed=0))
    assert len(tr) > 0 and len(va) > 0 and len(tr) + len(va) == 8


def test_decoded_crops_equal_reading_from_disk_and_are_reused(tmp_path, monkeypatch):
    from dfdetect.data import torch_datasets as D

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"c{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 255, (30 + 10 * i, 40, 3), dtype=np.uint8))
        paths.append(p)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    t = CropTable([*paths, bad], np.array([0, 1, 0, 1]), list("abcd"), [(v,) for v in "abcd"], np.zeros(4, bool))
    dec = decode_crops(t, 16, tmp_path / "cache")
    assert dec.images.shape == (4, 16, 16, 3) and dec.ok.tolist() == [True, True, True, False]
    from_disk, from_cache = CropDataset(t, input_size=16, data_config=DC), CropDataset(t, input_size=16,
                                                                                      data_config=DC, decoded=dec)
    for i in range(4):
        a, b = from_disk[i], from_cache[i]
        assert torch.equal(a[0], b[0]) and a[2] == b[2]
    assert not [f for f in (tmp_path / "cache").iterdir() if f.name.startswith(".")]  # no temp left

    monkeypatch.setattr(D, "read_image", lambda p: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = decode_crops(t, 16, tmp_path / "cache")
    assert np.array_equal(again.images, dec.images)


def test_augmentation_is_seeded_by_epoch_and_index(tmp_path):
    t = CropTable([_img(tmp_path / "a.png", 120, 40)], np.array([0]), ["a"], [("a",)], np.zeros(1, bool))
    ds = CropDataset(t, input_size=32, data_config=DC, augment=True, seed=3)
    draws = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        draws.append(ds[0][0])
        assert torch.equal(ds[0][0], draws[-1])  # same epoch, same draw
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # epochs differ
    rgb = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = augment_crop(rgb, np.random.default_rng(5))
    assert out.shape == rgb.shape and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]


def test_random_erasing_hides_one_region_and_keeps_the_draws_without_it(tmp_path):
    rgb = np.full((64, 64, 3), 128, np.uint8)
    for i in range(20):
        plain = augment_crop(rgb, np.random.default_rng(i))
        assert np.array_equal(plain, augment_crop(rgb, np.random.default_rng(i), erase=0.0))  # old draws kept
        erased = augment_crop(rgb, np.random.default_rng(i), erase=1.0)
        assert (rgb == 128).all()  # the input is never changed in place
        assert np.array_equal(erased, augment_crop(rgb, np.random.default_rng(i), erase=1.0))  # seeded
        changed = np.any(erased != plain, axis=2)
        ys, xs = np.nonzero(changed)
        assert 0.02 * 64 * 64 * 0.5 <= changed.sum() <= 64 * 64 / 3 + 64  # 2-33 % of the crop (noise may tie)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert changed.sum() >= 0.9 * box  # one filled rectangle, not scattered pixels
    t = CropTable([_img(tmp_path / "a.png", 120, 40)], np.array([0]), ["a"], [("a",)], np.zeros(1, bool))
    kept, hidden = (CropDataset(t, input_size=32, data_config=DC, augment=True, erase=e, seed=3)[0][0] for e in (0, 1))
    assert not torch.equal(kept, hidden)  # the dataset passes erase on


def test_group_components_is_the_graphs_connected_components():
    """scipy as the oracle: the same partition of rows (the ids may differ; data._UnionFind says why)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(3)
    for _ in range(20):
        n = 60
        videos = [f"v{i}" if rng.random() < 0.7 else f"v{rng.integers(0, i + 1)}" for i in range(n)]
        groups = [tuple(f"id{g}" for g in rng.choice(12, 1 + int(rng.random() < 0.1), replace=False))
                  for _ in range(n)]
        keys: dict = {}
        edges = [(keys.setdefault(("v", v), len(keys)), keys.setdefault(("g", g), len(keys)))
                 for v, gs in zip(videos, groups, strict=True) for g in gs]
        r, c = np.array(edges).T
        _, lab = connected_components(coo_matrix((np.ones(r.size), (r, c)), shape=(len(keys),) * 2),
                                      directed=False)
        want = lab[[keys[("v", v)] for v in videos]]
        got = group_components(videos, groups)
        assert np.array_equal(got[:, None] == got[None, :], want[:, None] == want[None, :])
