"""Budget-aware strategy search: many allocations scored one-shot, the best fine-tuned briefly, the best of
those fine-tuned fully, within a budget counted in full fine-tunes (FFE).

Strategys are per-unit positions inside the ranges, ``rho_l = lo_l + a_l (hi_l - lo_l)``, rescaled to
the target (so every candidate meets it exactly), for every signal. The named strategies go first, then
the allocations the ranges are built from, bounded by the rules; the rest come from Optuna's TPE
sampler, which learns from the one-shot scores where good allocations lie.
Its study lives in ``search.db`` (SQLite) in the run folder, so a rerun resumes the sampler too.
Promotion is synchronous successive halving (Jamieson & Talwalkar 2016): all candidates of a rung are
scored before the best ``1/eta`` move on, so every rung can run its candidates in parallel, and the
budget is spent exactly (Optuna's asynchronous pruner promotes the first trials it sees unchecked).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from ..planning import NAMED_STRATEGIES, Plan, Strategy
from .config import RunConfig

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Rungs:
    """How many candidates each rung holds and how long rung 1 fine-tunes (a fraction of the full budget)."""

    candidates: int  # rung 0: one-shot scores
    short: int  # rung 1: fine-tuned for ``1 / eta`` of the epochs
    full: int  # rung 2: fine-tuned fully, the pick among them on validation
    eta: int

    @property
    def cost(self) -> float:
        """Full fine-tune equivalents spent (one-shot scores are forward passes only)."""
        return self.short / self.eta + self.full

    @classmethod
    def for_budget(cls, budget: float, candidates: int, eta: int) -> Rungs:
        full = max(1, math.floor(budget / 2))
        short = min(candidates, max(full, math.floor((budget - full) * eta))) if budget - full >= 1 / eta else 0
        return cls(candidates, short, full, eta)


def _named_positions(plan: Plan, allocations: dict[str, dict[str, float]]) -> dict[str, np.ndarray]:
    """The named strategies as positions (their shape survives rescaling to the target), then the
    allocations the ranges come from (global magnitude, LAMP, ERK... at the target), bounded by the rules:
    the hull of the ranges is searched from its corners, so the search starts where the usual allocations
    are."""
    named = {name: np.asarray(position(plan.units), dtype=float) for name, position in NAMED_STRATEGIES.items()}
    width = np.where(plan.hi > plan.lo, plan.hi - plan.lo, 1.0)
    for name, sparsity in allocations.items():
        rho = np.array([sparsity[u.name] for u in plan.units])
        named[f"allocation-{name}"] = np.clip((rho - plan.lo) / width, 0.0, 1.0)
    return named


#: Proposals per sampler step, scored together (in parallel on a cluster) before the sampler learns from
#: them: the same for every executor, so a cluster proposes exactly what one machine would.
BATCH = 4


def propose(config: RunConfig, plans: dict[str, Plan], target: float, seed: int, storage: Path,
            allocations: dict[str, dict[str, float]], scaled: Callable[[Plan, Strategy, float], dict[str, float]],
            score: Callable[[list[Strategy]], list[tuple[float, float]]],
            done: dict[str, tuple[float, float]]) -> list[tuple[Strategy, float, float]]:
    """Rung 0: ``config.candidates`` distinct candidates with their one-shot (val accuracy, val loss).

    ``allocations``: per-unit sparsities of the usual allocations at the target, searched first after the named
    strategies. ``scaled`` brings a shape to the target (the pattern's: an exact rescale, or, for removed channels,
    the shape the pruning step bisects on); ``score`` evaluates (and records) a batch of candidates;
    ``done`` holds the scores already recorded (by candidate name), so a resumed search re-scores
    nothing. Strategys whose sparsities equal an earlier one's are skipped."""
    study = optuna.create_study(study_name=f"target{target:.4f}-seed{seed}", storage=f"sqlite:///{storage}",
                                load_if_exists=True, direction="minimize")
    units = next(iter(plans.values())).units
    named = [(s, n, a) for s in plans for n, a in _named_positions(plans[s], allocations).items()]
    seen: dict[tuple, str] = {}
    out: list[tuple[Strategy, float, float]] = []
    trials = {t.number: t for t in study.trials}
    number = 0
    while len(out) < config.candidates and number < 4 * config.candidates:
        batch = []  # (trial to tell, candidate, duplicate?)
        for _ in range(min(BATCH, config.candidates - len(out))):
            existing = trials.get(number)
            if existing is not None and existing.state != optuna.trial.TrialState.WAITING:
                params = existing.params  # asked before: told already, or cut short by a crash (told below)
                trial = None if existing.state.is_finished() else number
            else:
                if number < len(named):
                    study.enqueue_trial({"signal": named[number][0],
                                         **{f"a{i}": float(v) for i, v in enumerate(named[number][2])}})
                # a sampler seeded by the trial number: a resumed search proposes what it would have
                study.sampler = optuna.samplers.TPESampler(seed=seed * 10_000 + number, multivariate=True,
                                                           n_startup_trials=8)
                trial = study.ask()
                params = {"signal": trial.suggest_categorical("signal", list(plans)),
                          **{f"a{i}": trial.suggest_float(f"a{i}", 0.0, 1.0) for i in range(len(units))}}
            plan = plans[params["signal"]]
            position = np.array([params[f"a{i}"] for i in range(len(units))])
            sparsity = scaled(plan, Strategy.of("candidate", units, plan.lo + position * (plan.hi - plan.lo), plan.signal), target)
            label = named[number][1] if number < len(named) else f"tpe-{number:03d}"
            candidate = Strategy(f"{params['signal']}/{label}", sparsity, params["signal"])
            key = (candidate.signal, tuple(round(v, 6) for v in sparsity.values()))
            batch.append((trial, candidate, key in seen))  # a repeat teaches the sampler nothing new
            seen.setdefault(key, candidate.name)
            number += 1
        fresh = [c for _, c, repeat in batch if not repeat and c.name not in done]
        results = {**done, **{c.name: s for c, s in zip(fresh, score(fresh) if fresh else [])}}
        for trial, candidate, repeat in batch:
            if not repeat:
                out.append((candidate, *results[candidate.name]))
            if trial is not None:
                study.tell(trial, *((None, optuna.trial.TrialState.PRUNED) if repeat else
                                    (results[candidate.name][1],)))
    return out


def promote(scored: list[tuple[Strategy, float, float]], k: int) -> list[Strategy]:
    """The ``k`` best by validation accuracy, ties broken by the lower validation loss."""
    return [c for c, _, _ in sorted(scored, key=lambda s: (-s[1], s[2]))[:k]]
