"""Mix-and-Match pruning: architecture-aware sparsity ranges, ten strategies per signal, one-shot
masks, fine-tuning and the accuracy-vs-sparsity Pareto front; plus FlexHiNM-GP hybrid 2:4 sparsity.

The verbs, one per stage::

    plan = mm_plugin.plan(model, example_inputs, signal="magnitude")
    mm_plugin.prune_(model, plan.strategy("balanced"))  # by the signal the strategy was planned with
    mm_plugin.finetune(model, train_loader, val_loader, epochs=2)  # masks stay fixed
    mm_plugin.bake_masks_(model)  # plain zeros, ready for export

    # the strategy search over your model and your loop: the pick per target, a report and a plot
    result = mm_plugin.search(model, x, finetune=my_finetune, evaluate=my_evaluate, targets=[0.7], out="runs/s")
"""

from .errors import (
    CalibrationRequiredError,
    ConfigError,
    ExportVerificationError,
    MMError,
    NoPrunableLayersError,
    RuleError,
    UnknownNameError,
    UnsupportedModelError,
    ValidationError,
)
from .masks import (
    apply_masks_,
    bake_masks_,
    compute_masks,
    current_masks,
    global_sparsity,
    measure_sparsity,
    prune_,
)
from .model import IgnoredScope, Inventory, Unit, inventory
from .planning import (
    DEFAULT_RULES,
    Plan,
    Rule,
    Sensitivity,
    Strategy,
    list_allocations,
    list_signals,
    load_rules,
    plan,
    plan_units,
    register_allocation,
    register_signal,
)
from .portfolio import RunConfig, Task, classification_task, portfolio, run, search, select
from .registry import Needs
from .training import evaluate, finetune

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RULES",
    "CalibrationRequiredError",
    "ConfigError",
    "ExportVerificationError",
    "IgnoredScope",
    "Inventory",
    "MMError",
    "Needs",
    "NoPrunableLayersError",
    "Plan",
    "Rule",
    "RuleError",
    "RunConfig",
    "Sensitivity",
    "Strategy",
    "Task",
    "Unit",
    "UnknownNameError",
    "UnsupportedModelError",
    "ValidationError",
    "apply_masks_",
    "bake_masks_",
    "classification_task",
    "compute_masks",
    "current_masks",
    "evaluate",
    "finetune",
    "global_sparsity",
    "inventory",
    "list_allocations",
    "list_signals",
    "load_rules",
    "measure_sparsity",
    "plan",
    "plan_units",
    "portfolio",
    "prune_",
    "register_allocation",
    "register_signal",
    "run",
    "search",
    "select",
]
