"""The Protocol as the one source of truth: honest defaults, the mode union, one-line errors, --config FILE."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from dfdetect._io import save_config
from dfdetect.cli import app
from dfdetect.config import (
    INFERENCE,
    FullTrainConfig,
    HeadTrainConfig,
    Protocol,
    ServiceConfig,
    load_protocol,
    train_config,
    validation_line,
)

#: The seed report's recipe, field by field (frames -> faces -> frozen backbone -> head): pinned here so that a
#: change of a field's default can never move the seed protocol with it.
SEED = {
    "frames": {"num_frames": 1, "test_frames": None, "image_format": "jpg"},
    "faces": {"detector": "haar", "min_size": 128, "scale_factor": 1.1, "min_neighbors": 5, "margin": 1.0,
              "output_size": None, "detect_max_side": None, "image_format": "jpg", "keep": "largest"},
    "model": {"backbone": "mobilenet_v2", "input_size": 128, "pool": "max", "tta_flip": False, "ensemble": 1,
              "srm_in_model": False},
    "train": {"mode": "head", "epochs": 10, "batch_size": 32, "lr": 1e-4, "weight_decay": 0.0, "split": "random",
              "balance": "none", "frames_per_video": 1, "threshold": "fixed", "val_fraction": 0.15},
    "eval": {"frames_per_video": 1},
}


def test_a_bare_protocol_is_the_default_protocol():
    assert Protocol() == Protocol.default()
    assert Protocol().model_dump() == Protocol.named("default").model_dump()
    assert Protocol().train.mode == "full" and Protocol().faces.detector == "yunet"


def test_the_seed_protocol_keeps_every_setting_of_the_report():
    seed = Protocol.seed().model_dump()
    for section, fields in SEED.items():
        for key, want in fields.items():
            assert seed[section][key] == want, f"{section}.{key}"
    assert isinstance(Protocol.seed().train, HeadTrainConfig)


def test_head_mode_has_no_full_only_fields_and_refuses_them():
    head = train_config({"mode": "head"})
    assert isinstance(head, HeadTrainConfig) and not hasattr(head, "ema")
    assert isinstance(train_config({}), FullTrainConfig)
    with pytest.raises(ValidationError, match="augment applies to mode='full' only"):
        train_config({"mode": "head", "augment": True})
    with pytest.raises(ValidationError, match="model.tta_flip applies to mode='full' only"):
        Protocol.model_validate({**Protocol.seed().model_dump(), "model": {"tta_flip": True, "ensemble": 1}})
    # a head-mode file written before the union carries the full-only fields at their neutral values: it loads
    legacy = {**Protocol.seed().model_dump(), "train": {**Protocol.seed().train.model_dump(), "ema": 0.0,
                                                         "patience": 3, "augment": False, "sbi_mask": "ellipse"}}
    assert Protocol.model_validate(legacy) == Protocol.seed()


def test_both_protocols_round_trip_through_their_yaml(tmp_path):
    for p in (Protocol.seed(), Protocol.default()):
        path = save_config(p, tmp_path / f"{p.name}.yaml")
        assert load_protocol(path) == p.recipe()


def test_validation_errors_are_one_line_naming_the_field_or_the_flag():
    with pytest.raises(ValidationError) as err:
        Protocol.model_validate({"train": {"lr": -1}})
    assert validation_line(err.value) == "train.lr: Input should be greater than 0 (got -1)"
    assert validation_line(err.value, {"lr": "--lr"}).startswith("--lr: Input should be greater than 0")
    assert "\n" not in validation_line(err.value)


def test_inference_constants_live_in_the_config():
    import inspect

    from dfdetect.inference.predict import predict_path

    assert inspect.signature(predict_path).parameters["frames"].default == INFERENCE.frames
    assert ServiceConfig().frames == INFERENCE.frames


def test_config_file_with_flags_overriding_it(tmp_path):
    """``--config FILE`` reads a recipe YAML (a run's config.yaml); a flag given with it wins."""
    from dfdetect.cli.model import _protocol

    recipe = Protocol.default().model_copy(update={"train": Protocol.default().train.model_copy(update={"epochs": 3})})
    path = save_config(recipe, tmp_path / "config.yaml")
    p = _protocol(str(path), {"input_size": 96}, {"epochs": None})
    assert p.train.epochs == 3 and p.model.input_size == 96
    assert _protocol(str(path), {}, {"epochs": 5}).train.epochs == 5
    head = _protocol(str(path), {}, {"mode": "head"})  # full-only settings are left out, and said so
    assert isinstance(head.train, HeadTrainConfig) and head.model.ensemble == 1 and not head.model.tta_flip

    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"lr": "fast"}}))
    res = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(bad)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "train.lr: Input should be a valid number" in " ".join(res.output.split())
    res = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(path),
                              "--epochs", "0"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    # Face finders are a registry (plugins may add one), so a recipe's typo is caught against it, before any work
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"faces": {"detector": "yunett"}}))
    res = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(typo)])
    assert res.exit_code == 1 and "unknown face detector 'yunett'; choose from " in res.output
    assert not (tmp_path / "run").exists()


def test_train_with_a_runs_config_reproduces_the_run(tmp_path):
    """``dfdetect train DATA --config RUN/config.yaml`` trains the same detector, bit for bit."""
    import numpy as np

    from dfdetect._io import write_image

    rng = np.random.default_rng(0)
    for label, level in (("real", 60), ("fake", 180)):
        for i in range(12):
            write_image(tmp_path / "data" / label / f"{i}.png",
                        np.clip(rng.normal(level, 30, (40, 40, 3)), 0, 255).astype(np.uint8))
    runner = CliRunner()
    first = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "a"), "--protocol", "seed",
                                "--no-pretrained", "--epochs", "2", "--input-size", "32"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "b"),
                                "--config", str(tmp_path / "a" / "config.yaml")])
    assert again.exit_code == 0, again.output
    assert load_protocol(tmp_path / "b" / "config.yaml") == load_protocol(tmp_path / "a" / "config.yaml")
    assert (tmp_path / "b" / "detector.safetensors").read_bytes() == (tmp_path / "a" / "detector.safetensors").read_bytes()
