"""Training: the one loop (dense training and masked fine-tuning), the data it reads, the models it trains."""

from .crops import imagenet_crops
from .data import DATASETS, DataSplits, load_data
from .loop import (
    TRAINING_RECIPE,
    FinetuneResult,
    TrainingHook,
    evaluate,
    finetune,
    labels,
    optimizer_groups,
    reestimate_bn_,
    score,
    seed_everything,
)
from .zoo import MODEL_DATA, MODELS, create_model, pretrained_demo_model

__all__ = [
    "DATASETS",
    "MODELS",
    "MODEL_DATA",
    "TRAINING_RECIPE",
    "DataSplits",
    "FinetuneResult",
    "TrainingHook",
    "create_model",
    "evaluate",
    "finetune",
    "imagenet_crops",
    "labels",
    "load_data",
    "optimizer_groups",
    "pretrained_demo_model",
    "reestimate_bn_",
    "score",
    "seed_everything",
]
