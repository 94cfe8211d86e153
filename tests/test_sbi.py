"""Self-blended images: mask range, where the fake differs, determinism, landmarks, bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dfdetect.errors import BadInputError
from dfdetect.synthetic.sbi import BLEND_RATIOS, face_hull_mask, face_outline, sbi_pair, self_blend

SIDE = 128


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A centred ~1.3x-margin face crop of scikit-image's astronaut (a real photo a package ships)."""
    from skimage import data

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    x, y, w = 176, 65, 98  # the Haar face box in that photo
    c, half = (x + w / 2, y + w / 2), int(w * 1.3 / 2)
    crop = img[int(c[1]) - half:int(c[1]) + half, int(c[0]) - half:int(c[0]) + half]
    return cv2.resize(crop, (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def _border(side: int, width: int) -> np.ndarray:
    ring = np.ones((side, side), bool)
    ring[width:-width, width:-width] = False
    return ring


@pytest.mark.parametrize("seed", range(6))
def test_mask_and_difference_stay_inside_the_face(face: np.ndarray, seed: int) -> None:
    pair = sbi_pair(face, np.random.default_rng(seed), jpeg_quality=None)
    assert pair.mask.shape == face.shape[:2] and pair.mask.dtype == np.float32
    assert 0.0 <= pair.mask.min() and pair.mask.max() <= 1.0
    assert min(abs(pair.mask.max() - r) for r in BLEND_RATIOS) < 1e-3  # the soft mask peaks at the ratio
    diff = np.abs(pair.fake.astype(np.int16) - pair.real).sum(-1)
    # Before JPEG the two are identical wherever the mask is zero, the outer border included.
    assert diff[pair.mask == 0].max() == 0
    assert diff[_border(SIDE, SIDE // 12)].max() == 0
    assert diff[pair.mask > 0.5 * pair.mask.max()].mean() > 3.0


def test_after_jpeg_the_difference_is_mostly_inside_the_mask(face: np.ndarray) -> None:
    for seed in range(4):
        pair = sbi_pair(face, np.random.default_rng(seed))
        assert pair.jpeg_quality is not None and 40 <= pair.jpeg_quality <= 100
        diff = np.abs(pair.fake.astype(np.float32) - pair.real).mean(-1)
        inside, outside = diff[pair.mask > 0.2].mean(), diff[pair.mask == 0].mean()
        assert inside > 3 * outside, (seed, inside, outside)


def test_deterministic_per_seed(face: np.ndarray) -> None:
    a_fake, a_mask = self_blend(face, np.random.default_rng(7))
    b_fake, b_mask = self_blend(face, np.random.default_rng(7))
    c_fake, _ = self_blend(face, np.random.default_rng(8))
    assert np.array_equal(a_fake, b_fake) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_fake, c_fake)
    assert a_fake.shape == face.shape and a_fake.dtype == np.uint8


def test_five_landmarks_extend_to_a_face_shaped_hull() -> None:
    # MTCNN order: left eye, right eye, nose, left mouth corner, right mouth corner.
    lm = np.array([[50, 60], [78, 60], [64, 75], [53, 90], [75, 90]], np.float32)
    outline = face_outline(lm)
    assert len(outline) > 5
    mask = face_hull_mask((SIDE, SIDE), lm)
    assert all(mask[int(y), int(x)] == 1 for x, y in lm)
    assert mask[45, 64] == 1 and mask[100, 64] == 1  # forehead above the eyes, chin below the mouth
    assert mask[60, 5] == 0 and mask[5, 64] == 0 and mask[125, 64] == 0
    dense = np.array([[30, 40], [98, 40], [100, 90], [64, 120], [28, 90], [64, 30]], np.float32)
    assert np.array_equal(face_outline(dense), dense)  # 68/81-point sets are used as they are


def test_landmark_hull_drives_the_blend(face: np.ndarray) -> None:
    lm = np.array([[30, 40], [60, 40], [45, 52], [34, 64], [56, 64]], np.float32)  # a face up-left
    pair = sbi_pair(face, np.random.default_rng(0), landmarks=lm, jpeg_quality=None)
    ys, xs = np.nonzero(pair.mask > 0.1)
    assert xs.mean() < SIDE / 2 and ys.mean() < SIDE / 2


@pytest.mark.parametrize(
    "bad",
    [np.zeros((64, 64), np.uint8), np.zeros((16, 16, 3), np.uint8), np.zeros((64, 64, 3), np.float32)],
    ids=["grey", "tiny", "float"],
)
def test_bad_crop_is_one_clear_error(bad: np.ndarray) -> None:
    with pytest.raises(BadInputError, match=r"shape \(H, W, 3\).*got shape"):
        self_blend(bad, np.random.default_rng(0))


def test_bad_landmarks_are_one_clear_error(face: np.ndarray) -> None:
    with pytest.raises(BadInputError, match="landmarks"):
        self_blend(face, np.random.default_rng(0), landmarks=np.zeros((3, 2)))
