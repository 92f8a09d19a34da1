import logging
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from qkcopy.model.backbone import (
    LITE_PACKAGES,
    _lite_weights_path,
    create_backbone,
    default_input_size,
    feature_dim,
    imagenet_photos,
    input_normalization,
    lite_to_timm,
    verify_imagenet,
)


def _lite_source(name):
    return torch.load(_lite_weights_path(name), map_location="cpu", weights_only=True)


def _tf_layout(name, num_classes):
    return timm.create_model(name, pretrained=False, num_classes=num_classes, pad_type="same", bn_eps=1e-3)


@pytest.mark.parametrize("name", sorted(LITE_PACKAGES))
def test_lite_mapping_fills_every_timm_key(name):
    src = _lite_source(name)
    model = _tf_layout(name, 1000)
    out = lite_to_timm(src, model)
    assert set(out) == set(model.state_dict())
    assert len(out) == len(src)  # one-to-one: nothing left over
    assert {id(v) for v in out.values()} == {id(v) for v in src.values()}
    # spot checks written out by hand: stem, first block (depthwise-separable), last block, head, classifier
    last = sum(len(s) for s in model.blocks) - 1
    assert out["conv_stem.weight"] is src["_conv_stem.weight"]
    assert out["bn1.running_var"] is src["_bn0.running_var"]
    assert out["blocks.0.0.conv_dw.weight"] is src["_blocks.0._depthwise_conv.weight"]
    assert out["blocks.0.0.conv_pw.weight"] is src["_blocks.0._project_conv.weight"]
    assert out["blocks.1.0.conv_pw.weight"] is src["_blocks.1._expand_conv.weight"]
    assert out["blocks.1.0.bn3.bias"] is src["_blocks.1._bn2.bias"]
    assert out[f"blocks.6.{len(model.blocks[6]) - 1}.conv_pwl.weight"] is src[f"_blocks.{last}._project_conv.weight"]
    assert out["bn2.weight"] is src["_bn1.weight"]
    assert out["classifier.weight"] is src["_fc.weight"]


def test_lite_mapping_headless_drops_only_classifier():
    src = _lite_source("efficientnet_lite0")
    out = lite_to_timm(src, _tf_layout("efficientnet_lite0", 0))
    assert len(out) == len(src) - 2 and "classifier.weight" not in out


def test_lite_mapping_rejects_missing_extra_and_misshaped():
    src = dict(_lite_source("efficientnet_lite0"))
    model = _tf_layout("efficientnet_lite0", 1000)
    with pytest.raises(ValueError, match=r"_blocks\.3\._bn1\.weight missing"):
        lite_to_timm({k: v for k, v in src.items() if k != "_blocks.3._bn1.weight"}, model)
    with pytest.raises(ValueError, match="_extra.weight left over"):
        lite_to_timm({**src, "_extra.weight": torch.zeros(1)}, model)
    with pytest.raises(ValueError, match="shape"):
        lite_to_timm({**src, "_conv_stem.weight": torch.zeros(32, 3, 5, 5)}, model)
    # lite1 weights do not fit the lite0 layout (other kernel sizes and widths, more blocks)
    with pytest.raises(ValueError, match=r"[1-9]\d* problems, first: \['blocks\.2\.0\.conv_dw\.weight .* shape"):
        lite_to_timm(_lite_source("efficientnet_lite1"), model)


def test_create_backbone_loads_package_weights():
    model = create_backbone("efficientnet_lite0").eval()
    src = _lite_source("efficientnet_lite0")
    assert torch.equal(model.state_dict()["blocks.2.1.conv_dw.weight"], src["_blocks.4._depthwise_conv.weight"])
    assert model.bn1.eps == 1e-3 and type(model.conv_stem).__name__ == "Conv2dSame"
    assert feature_dim(model) == 1280
    with torch.no_grad():
        feat = model(torch.rand(2, 3, 96, 96))
    assert feat.shape == (2, 1280) and (feat >= 0).all()  # pooled ReLU6 activations


def test_weights_file_roundtrip(tmp_path):
    model = create_backbone("efficientnet_lite0", None)
    sd = model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    torch.save(sd, tmp_path / "w.pth")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        loaded = create_backbone("efficientnet_lite0", path).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    # a full file in lukemelas naming, classifier included, also loads into the headless backbone
    pkg = create_backbone("efficientnet_lite0", _lite_weights_path("efficientnet_lite0")).state_dict()
    ref = create_backbone("efficientnet_lite0").state_dict()
    assert all(torch.equal(pkg[k], v) for k, v in ref.items())


def test_bad_weights_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_backbone("efficientnet_lite0", tmp_path / "nowhere.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth"):
        create_backbone("efficientnet_lite0", garbage)
    pickled = tmp_path / "pickled.pth"
    torch.save({"w": torch.zeros(1), "obj": logging.getLogger("x")}, pickled)  # refused by weights_only
    with pytest.raises(ValueError, match="pickled.pth"):
        create_backbone("efficientnet_lite0", pickled)
    (tmp_path / "cut.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="cut.safetensors"):
        create_backbone("efficientnet_lite0", tmp_path / "cut.safetensors")
    with pytest.raises(ValueError, match=r"efficientnet-lite1-.*\.pth: EfficientNet-Lite weights do not map"):
        create_backbone("efficientnet_lite0", _lite_weights_path("efficientnet_lite1"))
    other = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", num_classes=0).state_dict(), other)
    with pytest.raises(ValueError, match=r"resnet18\.safetensors.*missing \(e\.g\. \['conv_stem\.weight'"):
        create_backbone("efficientnet_lite0", other)
    sd = create_backbone("efficientnet_lite0", None).state_dict()
    sd["conv_head.weight"] = torch.zeros(1280, 320, 3, 3)
    save_file(sd, tmp_path / "misshaped.safetensors")
    with pytest.raises(ValueError, match=r"1 shape mismatches .*conv_head\.weight"):
        create_backbone("efficientnet_lite0", tmp_path / "misshaped.safetensors")


def test_random_init_warns_and_differs(caplog):
    with caplog.at_level(logging.WARNING, logger="qkcopy.model.backbone"):
        random = create_backbone("efficientnet_lite0", None)
    assert "random weights" in caplog.text
    assert not torch.equal(random.conv_head.weight, create_backbone("efficientnet_lite0").conv_head.weight)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown timm model 'efficientnet_lite9'"):
        create_backbone("efficientnet_lite9")


@pytest.mark.slow  # a fresh interpreter importing torch + timm
def test_timm_hub_failure_suggests_weights_file():
    code = ("from qkcopy.model.backbone import create_backbone\n"
            "try:\n    create_backbone('resnet18')\nexcept ValueError as e:\n    print('ERR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if not out.stdout.startswith("ERR"):
        pytest.skip("resnet18 weights are in the local hub cache")
    assert "resnet18" in out.stdout and "--weights FILE" in out.stdout


def test_normalization_constants():
    x = torch.rand(2, 3, 8, 8)
    for name in LITE_PACKAGES:
        mean, std = input_normalization(name)
        assert mean == (127 / 255,) * 3 and std == (128 / 255,) * 3
        m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        assert torch.allclose((x - m) / s, (x * 255 - 127) / 128, atol=1e-5)
    assert input_normalization("resnet18") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert input_normalization("tf_efficientnet_lite0") == ((0.5,) * 3, (0.5,) * 3)
    assert [default_input_size(f"efficientnet_lite{i}") for i in range(3)] == [224, 240, 260]
    assert default_input_size("resnet18") == 224


def test_imagenet_photo_labels(shared_photos):
    photos = dict((p.name, c) for p, c in imagenet_photos(shared_photos / "eval", 1749))
    assert len(photos) == 1749  # every in-1k photo once; wnids outside ImageNet-1k (n00007846 person) skipped
    assert photos["in_n01440764_tench.jpg"] == 0 and photos["in_n01443537_goldfish.jpg"] == 1
    assert not any("n00007846" in n for n in photos)


@pytest.mark.slow  # ~10 s on one free core
def test_lite0_classifies_imagenet_photos(shared_photos):
    top1, top5 = verify_imagenet("efficientnet_lite0", shared_photos / "eval", n=30)
    assert top1 >= 0.6 and top5 >= top1
