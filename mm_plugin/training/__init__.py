"""Training: the one loop (dense training and masked fine-tuning), the data it reads, the models it trains."""

from .data import DATASETS, DataSplits, load_data
from .loop import FinetuneResult, TrainingHook, evaluate, finetune, seed_everything
from .zoo import MODELS, create_model, pretrained_demo_model

__all__ = [
    "DATASETS", "MODELS", "DataSplits", "FinetuneResult", "TrainingHook", "create_model", "evaluate", "finetune",
    "load_data", "pretrained_demo_model", "seed_everything",
]
