import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dfdetect.evaluation.metrics import compute_metrics, expected_calibration_error, video_scores
from dfdetect.model.calibration import apply_temperature, choose_threshold, eer, fit_temperature


def test_frame_metrics_match_sklearn_and_confusion_uses_fake_as_positive():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    m = compute_metrics(y, p, threshold=0.5)
    assert m.frame_auc == pytest.approx(roc_auc_score(y, p))
    (tn, _fp), (_fn, tp) = m.confusion
    assert tp == int(((p >= 0.5) & (y == 1)).sum())
    assert tn == int(((p < 0.5) & (y == 0)).sum())
    assert m.accuracy == pytest.approx((tp + tn) / 200)
    assert m.n_fake == int(y.sum())


def test_video_auc_averages_frames_per_video():
    # Frame scores are noisy; the per-video mean separates perfectly.
    videos = ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3
    y = [0] * 6 + [1] * 6
    p = [0.1, 0.9, 0.2, 0.3, 0.2, 0.1, 0.8, 0.3, 0.9, 0.7, 0.6, 0.2]
    m = compute_metrics(y, p, videos=videos)
    assert m.frame_auc < 1.0
    assert m.video_auc == 1.0
    assert m.n_videos == 4
    ids, _yv, pv = video_scores(y, p, videos, "max")
    assert ids == ["a", "b", "c", "d"] and pv[0] == pytest.approx(0.9)


def test_video_with_mixed_labels_is_rejected():
    with pytest.raises(ValueError, match="both real and fake"):
        video_scores([0, 1], [0.1, 0.2], ["v", "v"])


def test_single_class_warns_and_gives_nan():
    with pytest.warns(UserWarning, match="only one class"):
        m = compute_metrics([1, 1, 1], [0.2, 0.6, 0.9])
    assert math.isnan(m.frame_auc)
    assert m.to_dict()["frame_auc"] is None
    assert m.accuracy == pytest.approx(2 / 3)


def test_threshold_is_chosen_to_separate_imbalanced_scores():
    # Everything scores above 0.5 (the seed's "all fake" failure), but the ranking is perfect.
    y = np.array([0] * 10 + [1] * 60)
    p = np.concatenate([np.linspace(0.55, 0.7, 10), np.linspace(0.75, 0.99, 60)])
    assert compute_metrics(y, p, threshold=choose_threshold(y, p, "fixed")).confusion[0] == [0, 10]
    for method in ("val_youden", "val_eer"):
        t = choose_threshold(y, p, method)
        m = compute_metrics(y, p, threshold=t)
        assert m.accuracy == 1.0, method


def test_eer_of_perfect_and_random_scores():
    assert eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])[0] == 0.0
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 4000)
    assert eer(y, rng.random(4000))[0] == pytest.approx(0.5, abs=0.05)


def test_bad_shapes_name_the_problem():
    with pytest.raises(ValueError, match="3 labels but p_fake has 2"):
        compute_metrics([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1 \\(fake\\)"):
        compute_metrics([0, 2], [0.1, 0.2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="NaN"):
            compute_metrics([0, 1], [0.1, float("nan")])


def test_fit_temperature_recovers_the_temperature_that_made_scores_overconfident():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)  # calibrated at T = 1
    over = 1 / (1 + np.exp(-3 * z))  # the same ranking, three times too confident
    t = fit_temperature(y, over)
    assert t == pytest.approx(3.0, rel=0.08)
    fixed = apply_temperature(over, t)
    assert expected_calibration_error(y, fixed) < 0.02 < expected_calibration_error(y, over)
    assert roc_auc_score(y, fixed) == pytest.approx(roc_auc_score(y, over))


def test_temperature_and_ece_edge_cases():
    assert fit_temperature([1, 1, 1], [0.2, 0.7, 0.9]) == 1.0  # one class: nothing to fit
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    assert expected_calibration_error([0, 1], [1.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="NaN"):
        expected_calibration_error([0, 1], [np.nan, 0.5])
