"""A user's trained weights into a model: a state dict (``.pt``/``.pth``/``.bin``, bare or inside a training
checkpoint), ``.safetensors``, or a full pickled model. A checkpoint whose classifier has another number of
classes is loaded with the classifier replaced (and said so); any other mismatch is an error naming the keys."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

#: Where training scripts keep the state dict inside a checkpoint (timm, Lightning, torchvision references).
STATE_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "module")


def _read(path: Path) -> Any:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError("a .safetensors checkpoint needs safetensors: pip install safetensors") from None
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a pickled model object: only from files the user trusts
        log.warning("%s holds pickled Python objects (a whole model); loading it runs its code: use only files you "
                    "trust, or save model.state_dict() instead", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure to unpickle: the file or its classes
            raise ConfigError(f"cannot load {path}: {type(e).__name__}: {e}; if the model's class lives in your own "
                              "package, make it importable (PYTHONPATH) or save model.state_dict()") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise ConfigError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None


def _state_dict(payload: Any, path: Path) -> dict[str, torch.Tensor] | nn.Module:
    if isinstance(payload, nn.Module):
        return payload
    if isinstance(payload, Mapping):
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            return dict(payload)
        for key in STATE_KEYS:
            if key in payload:
                return _state_dict(payload[key], path)
    raise ConfigError(f"{path} holds no state dict or model ({type(payload).__name__}); save model.state_dict(), or "
                      f"a checkpoint dict with one of {', '.join(STATE_KEYS)}")


def _classifier(model: nn.Module) -> str | None:
    """The model's last layer with weights (its classifier), by module name."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and name:
            last = name
    return last


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """``model`` with the checkpoint at ``path`` loaded (or the pickled model the file holds). A classifier of
    another size is replaced (newly initialised, logged in one line); any other difference is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    found = _state_dict(_read(path), path)
    if isinstance(found, nn.Module):
        log.info("loaded the whole model %s from %s", type(found).__name__, path)
        return found
    if found and all(k.startswith("module.") for k in found):  # saved from DistributedDataParallel
        found = {k[len("module."):]: v for k, v in found.items()}
    own = model.state_dict()
    head = _classifier(model)
    missing = sorted(set(own) - set(found))
    unexpected = sorted(set(found) - set(own))
    resized = sorted(k for k in set(own) & set(found) if own[k].shape != found[k].shape)
    replaced = [k for k in resized if head and k.rpartition(".")[0] == head]
    other = [k for k in resized if k not in replaced]
    if missing or unexpected or other:
        parts = [f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", other)) if keys]
        raise ConfigError(f"{path} does not fit {type(model).__name__} ({'; '.join(parts)}); give --model the "
                          "architecture the checkpoint was saved from")
    if replaced:
        theirs, ours = found[replaced[0]].shape[0], own[replaced[0]].shape[0]
        for k in replaced:
            del found[k]
        log.warning("%s: the classifier %r has %d outputs there and %d here: it is replaced and newly initialised; "
                    "train it (--dense-epochs N) before pruning", path.name, head, theirs, ours)
    model.load_state_dict(found, strict=not replaced)
    return model
