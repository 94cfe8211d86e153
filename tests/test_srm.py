"""srm: kernel values, float computation and 8-bit scaling, the in-model layer, the resumable copy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dfdetect.config import SRMConfig
from dfdetect.errors import BadInputError
from dfdetect.preprocess import srm as S
from dfdetect.preprocess.manifest import MANIFEST_NAME, read_manifest, write_manifest


def test_kernel_values_match_reference():
    kb = np.array([[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]]) / 4
    kv = np.array([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
                   [-1, 2, -2, 2, -1]]) / 12
    h2 = np.zeros((5, 5))
    h2[2, 1:4] = [0.5, -1, 0.5]
    assert S.SRM_KERNELS.shape == (3, 5, 5) and S.SRM_KERNELS.dtype == np.float32
    for got, want in zip(S.SRM_KERNELS, (kb, kv, h2)):
        np.testing.assert_array_equal(got, want.astype(np.float32))
        assert abs(got.sum()) < 1e-6  # high-pass: a flat image gives zero residual
    assert S.SRM_KERNEL_NAMES == ("KB", "KV", "H2")


def test_flat_image_is_mid_grey_and_scaling_is_linear():
    flat = np.full((16, 16, 3), 77, np.uint8)
    assert (S.srm_filter_image(flat) == 128).all()  # residual 0 -> 127.5 -> 128
    np.testing.assert_array_equal(S._to_uint8(np.array([-10.0, -3, -1.5, 0, 1.5, 3, 10]), 3.0),
                                  [0, 0, 64, 128, 191, 255, 255])


def test_classic3_is_float_sum_over_channels():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    cfg = SRMConfig(mode="classic3", clip=50.0)
    out = S.srm_filter_image(img, cfg)
    for c, k in enumerate(S.SRM_KERNELS):
        res = sum(cv2.filter2D(img[..., ch].astype(np.float64), -1, k.astype(np.float64)) for ch in range(3))
        want = np.rint((np.clip(res, -50, 50) + 50) * 255 / 100)
        assert np.abs(out[..., c].astype(int) - want).max() <= 1
    # negative residuals survive (would be lost on uint8): values below mid-grey exist
    assert (out < 128).any() and (out > 128).any()


def test_seed_mode_is_one_kernel_per_channel():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    out = S.srm_filter_image(img, SRMConfig(mode="seed", seed_kernel="KB", clip=3.0))
    want = S._to_uint8(cv2.filter2D(img.astype(np.float32), cv2.CV_32F, S.SRM_KERNELS[0]), 3.0)
    np.testing.assert_array_equal(out, want)


def test_in_model_layer_is_fixed_and_matches_classic3():
    layer = S.SRMConv2d()
    assert layer.out_channels == 3 and list(layer.parameters()) == []
    assert "weight" in layer.state_dict()
    x = torch.randn(2, 3, 32, 32)
    y = layer(x)
    assert y.shape == (2, 3, 32, 32) and y.abs().max() <= 3
    # interior pixels: channel i = kernel i summed over the 3 input channels (cv2 agrees away from borders)
    img = x[0].permute(1, 2, 0).numpy()
    for c, k in enumerate(S.SRM_KERNELS):
        ref = np.clip(cv2.filter2D(img, cv2.CV_32F, k).sum(axis=2), -3, 3)
        np.testing.assert_allclose(y[0, c, 2:-2, 2:-2].numpy(), ref[2:-2, 2:-2], atol=1e-5)


def test_make_srm_copy_mirrors_resumes_and_copies_manifest(tmp_path):
    faces = tmp_path / "faces"
    vid = faces / "Celeb-real" / "id0_0000"
    vid.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(vid / "00000.jpg"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    cv2.imwrite(str(vid / "00001.jpg"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (vid / "00002.jpg").write_bytes(b"")
    write_manifest(faces / MANIFEST_NAME, [
        {"path": "Celeb-real/id0_0000/00000.jpg", "video_id": "Celeb-real/id0_0000", "frame": "00000", "x0": 0,
         "y0": 0, "x1": 32, "y1": 32, "score": 5, "status": "ok", "reason": ""}])
    out = tmp_path / "srm"
    report = S.make_srm_copy(faces, out, SRMConfig())
    assert (report.written, report.reused, len(report.failed)) == (2, 0, 1)
    assert "00002.jpg" in report.failed[0]
    png = out / "Celeb-real" / "id0_0000" / "00000.png"
    np.testing.assert_array_equal(cv2.imread(str(png)), S.srm_filter_image(cv2.imread(str(vid / "00000.jpg"))))
    assert read_manifest(out / MANIFEST_NAME)[0]["path"] == "Celeb-real/id0_0000/00000.png"
    again = S.make_srm_copy(faces, out, SRMConfig())
    assert (again.written, again.reused) == (0, 2)
    with pytest.raises(BadInputError, match=r"other srm settings \(mode: .classic3. -> .seed.\)"):
        S.make_srm_copy(faces, out, SRMConfig(mode="seed"))
    with pytest.raises(BadInputError, match="faces folder not found"):
        S.make_srm_copy(tmp_path / "missing", out, SRMConfig())


def test_stage_import_does_not_load_torch():
    """Pool / Ray workers of the srm stage import dfdetect.preprocess.srm; torch must wait until SRMConv2d is used."""
    import subprocess
    import sys

    code = "import sys, dfdetect.preprocess.srm; assert 'torch' not in sys.modules; dfdetect.preprocess.srm.SRMConv2d; " \
           "assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
