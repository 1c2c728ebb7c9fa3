"""Training: the one loop (dense training and masked fine-tuning), the data it reads, the models it trains."""

from ..metrics import macro_f1
from . import elpv  # noqa: F401 - registers the built-in dataset "elpv"
from .crops import imagenet_crops
from .data import DATASETS, DataSplits, load_data
from .folders import ImageConfig, image_classes, image_config, image_data, is_image_data
from .loop import (
    TRAINING_RECIPE,
    FinetuneResult,
    TrainingHook,
    evaluate,
    finetune,
    labels,
    mean_loss,
    optimizer_groups,
    predict,
    reestimate_bn_,
    score,
    seed_everything,
)
from .weights import load_weights
from .zoo import MODEL_DATA, MODELS, create_model, pretrained_demo_model

__all__ = [
    "DATASETS",
    "MODELS",
    "MODEL_DATA",
    "TRAINING_RECIPE",
    "DataSplits",
    "FinetuneResult",
    "ImageConfig",
    "TrainingHook",
    "create_model",
    "evaluate",
    "finetune",
    "image_classes",
    "image_config",
    "image_data",
    "imagenet_crops",
    "is_image_data",
    "labels",
    "load_data",
    "load_weights",
    "macro_f1",
    "mean_loss",
    "optimizer_groups",
    "predict",
    "pretrained_demo_model",
    "reestimate_bn_",
    "score",
    "seed_everything",
]
