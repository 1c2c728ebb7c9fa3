"""Budget-aware strategy search: many allocations scored one-shot, the best fine-tuned briefly, the best of
those fine-tuned fully, within a budget counted in full fine-tunes (FFE).

Candidates are per-unit positions inside the ranges, ``rho_l = lo_l + a_l (hi_l - lo_l)``, rescaled to
the target (so every candidate meets it exactly), for every signal. The usual allocations at the target
go first exactly as they are, so the pool always holds what a user already has; then the named
strategies and those allocations bounded by the rules; the rest come from a sampler: Optuna's TPE, which
learns from the one-shot scores where good allocations lie (its study lives in Optuna's journal file
``search.journal`` in the run folder, so a rerun resumes it), or EvoPress-style level switches selected on
calibration losses. The budget counts every rung: the one-shot scores by their measured work, then the short
and full fine-tunes (:class:`Rungs`).
Promotion is synchronous successive halving (Jamieson & Talwalkar 2016): all candidates of a rung are
scored before the best ``1/eta`` move on, so every rung can run its candidates in parallel, and the
budget is spent exactly (Optuna's asynchronous pruner promotes the first trials it sees unchecked).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from ..errors import ConfigError
from ..metrics import beats
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
    oneshot: float = 0.0  # what one one-shot score costs, in full fine-tunes (measured; 0: not counted)

    @property
    def short_cost(self) -> float:
        """A short fine-tune: its one-shot start (pruning, BatchNorm) and ``1 / eta`` of the rest of a full one."""
        return self.oneshot + (1 - self.oneshot) / self.eta

    @property
    def cost(self) -> float:
        """Full fine-tune equivalents spent: the one-shot scores, the short fine-tunes and the full ones."""
        return self.candidates * self.oneshot + self.short * self.short_cost + self.full

    @classmethod
    def for_budget(cls, budget: float, candidates: int, eta: int, oneshot: float = 0.0) -> Rungs:
        """Half the budget (at least one) for full fine-tunes, ``candidates`` one-shot scores at ``oneshot`` each,
        and short fine-tunes with what is left; none where fewer than one more than the full ones fit (a rung
        that keeps all it holds selects nothing), so the finalists are then the best one-shot scores."""
        full = max(1, math.floor(budget / 2))
        rungs = cls(candidates, 0, full, eta, oneshot)
        short = min(candidates, math.floor((budget - rungs.cost) / rungs.short_cost + 1e-9))
        return replace(rungs, short=short) if short > full else rungs

    def candidates_for(self, budget: float) -> int:
        """The most one-shot candidates that leave room in ``budget`` for twice as many short fine-tunes as full
        ones (0: none do)."""
        left = budget - self.full - 2 * self.full * self.short_cost
        return max(0, math.floor(left / self.oneshot)) if self.oneshot else self.candidates


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


#: The name prefix of the usual allocations held exactly as they are (``<signal>/exact-<name>``).
EXACT = "exact-"
#: Proposals per sampler step, scored together (in parallel on a cluster) before the sampler learns from
#: them: the same for every executor, so a cluster proposes exactly what one machine would.
BATCH = 4


def propose(config: RunConfig, plans: dict[str, Plan], target: float, seed: int, storage: Path,
            allocations: dict[str, dict[str, float]], scaled: Callable[[Plan, Strategy, float], dict[str, float]],
            score: Callable[[list[Strategy]], list[tuple[float, float | None]]],
            done: dict[str, tuple[float, float | None]], fitness: Fitness | None = None,
            ) -> list[tuple[Strategy, float, float | None]]:
    """Rung 0: ``config.candidates`` distinct candidates with their one-shot (val score, val loss).

    The usual allocations at the target come first exactly as they are (``exact-<name>``: the pool always
    holds what a user already has, even where the rules bound the ranges tighter), then the named strategies
    and those allocations bounded by the ranges (``allocation-<name>``), then the sampler's proposals:
    Optuna's TPE (``config.sampler == "tpe"``) or EvoPress-style level switches (``"evopress"``, which needs
    ``fitness``). ``scaled`` brings a shape to the target (the pattern's: an exact rescale, or, for removed
    channels, the shape the pruning step bisects on); ``score`` evaluates (and records) a batch of
    candidates; ``done`` holds the scores already recorded (by candidate name), so a resumed search
    re-scores nothing. Candidates whose sparsities equal an earlier one's are skipped."""
    pool = _Pool(config.candidates, score, done)
    signal = next(iter(plans))
    pool.add([Strategy(f"{signal}/{EXACT}{name}", dict(sparsity), signal) for name, sparsity in allocations.items()])
    if config.sampler == "evopress":
        return _evopress(config, plans, target, seed, allocations, scaled, fitness, pool)
    return _tpe(config, plans, target, seed, storage, allocations, scaled, pool)


class _Pool:
    """The candidates scored so far, in order, without repeats; scoring goes through the recorded ``score``."""

    def __init__(self, size: int, score: Callable[[list[Strategy]], list[tuple[float, float | None]]],
                 done: dict[str, tuple[float, float | None]]) -> None:
        self.size, self.score, self.done = size, score, done
        self.out: list[tuple[Strategy, float, float | None]] = []
        self.seen: dict[tuple, str] = {}

    def full(self) -> bool:
        return len(self.out) >= self.size

    def key(self, candidate: Strategy) -> tuple:
        return candidate.signal, tuple(round(v, 6) for v in candidate.sparsity.values())

    def add(self, candidates: list[Strategy]) -> list[tuple[float, float | None] | None]:
        """Score the new ones (up to the pool's size, in one batch); each candidate's scores, None for a repeat
        or one past the size."""
        fresh: list[Strategy] = []
        for c in candidates:
            if self.key(c) not in self.seen and len(self.out) + len(fresh) < self.size:
                self.seen[self.key(c)] = c.name
                fresh.append(c)
        todo = [c for c in fresh if c.name not in self.done]
        results = {**self.done, **{c.name: s for c, s in zip(todo, self.score(todo) if todo else [])}}
        self.out += [(c, *results[c.name]) for c in fresh]
        return [results[c.name] if c in fresh else None for c in candidates]


def _tpe(config: RunConfig, plans: dict[str, Plan], target: float, seed: int, storage: Path,
         allocations: dict[str, dict[str, float]], scaled: Callable[[Plan, Strategy, float], dict[str, float]],
         pool: _Pool) -> list[tuple[Strategy, float, float | None]]:
    """Named positions first (enqueued, so the sampler learns from them), then TPE's, in batches."""
    study = optuna.create_study(study_name=f"target{target:.4f}-seed{seed}", load_if_exists=True, direction="minimize",
                                storage=JournalStorage(JournalFileBackend(str(storage))))  # 5x faster than SQLite here
    units = next(iter(plans.values())).units
    named = [(s, n, a) for s in plans for n, a in _named_positions(plans[s], allocations).items()]
    trials = {t.number: t for t in study.trials}
    number = 0
    while not pool.full() and number < 4 * config.candidates:
        batch = []  # (trial to tell, candidate)
        for _ in range(min(BATCH, config.candidates - len(pool.out))):
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
            label = named[number][1] if number < len(named) else f"tpe-{number:03d}"
            batch.append((trial, _at(plan, position, target, scaled, label)))
            number += 1
        results = pool.add([c for _, c in batch])
        for (trial, _), result in zip(batch, results):
            if trial is not None:  # a repeat teaches the sampler nothing new
                study.tell(trial, *((None, optuna.trial.TrialState.PRUNED) if result is None else (result[1],)))
    return pool.out


def _at(plan: Plan, position: np.ndarray, target: float,
        scaled: Callable[[Plan, Strategy, float], dict[str, float]], label: str) -> Strategy:
    """The strategy at ``position`` inside the plan's ranges, brought to ``target``."""
    shape = Strategy.of("candidate", plan.units, plan.lo + position * (plan.hi - plan.lo), plan.signal)
    return Strategy(f"{plan.signal}/{label}", scaled(plan, shape, target), plan.signal)


#: ``fitness(candidates, batches)``: each candidate's one-shot loss on the first ``batches`` calibration
#: batches (``-1``: all of them; lower is better), BatchNorm re-estimated on those same batches, so the
#: first step of the selection costs a fraction of the last; nothing recorded.
Fitness = Callable[[list[Strategy], int], list[float]]
#: EvoPress's steps of selection on growing data: offspring on one batch, the best quarter on all of them.
EVO_OFFSPRING, EVO_SURVIVORS, EVO_LEVEL = 8, 2, 0.1


def _evopress(config: RunConfig, plans: dict[str, Plan], target: float, seed: int,
              allocations: dict[str, dict[str, float]], scaled: Callable[[Plan, Strategy, float], dict[str, float]],
              fitness: Fitness | None, pool: _Pool) -> list[tuple[Strategy, float, float | None]]:
    """EvoPress (Sieberling et al., ICML 2025) inside the ranges: the named positions scored first; then,
    from the best of them, generations of level-switch mutations (one unit a level up, another a level
    down; the rescale to the target keeps the total fixed) selected in steps on more and more calibration
    batches before any fine-tune. Each generation's winner, when it beats its parent on all the batches,
    becomes a candidate (``evo-<generation>``) and the next parent. There are as many generations as the
    pool has places left after the named positions: a generation costs about four one-shot losses on all
    the batches (eight on one batch, two on all), so the sampler's cost stays a small multiple of TPE's
    one score per place."""
    if fitness is None:
        raise ConfigError("sampler 'evopress' selects on calibration losses: the run needs calibration batches")
    units = next(iter(plans.values())).units
    named = [(s, n, a) for s in plans for n, a in _named_positions(plans[s], allocations).items()]
    positions: dict[str, tuple[str, np.ndarray]] = {}
    for i in range(0, len(named), BATCH):
        chunk = [(sig, _at(plans[sig], a, target, scaled, n), a) for sig, n, a in named[i:i + BATCH]]
        positions.update({c.name: (sig, a) for sig, c, a in chunk})
        pool.add([c for _, c, _ in chunk])
    best = max((r for r in pool.out if r[0].name in positions), key=lambda r: (r[1], -(r[2] or 0.0)))[0]
    signal, parent = positions[best.name]
    plan = plans[signal]
    rng = np.random.default_rng([seed, round(target * 1e4), len(units)])
    all_batches = fitness([_at(plan, parent, target, scaled, "parent")], -1)[0]
    generations = config.candidates - len(pool.out)
    for generation in range(1, generations + 1):
        kids = []
        for _ in range(EVO_OFFSPRING):
            child = parent.copy()
            for _ in range(int(rng.integers(1, 4))):  # one to three level switches
                up, down = rng.choice(len(units), size=2, replace=False)
                child[up], child[down] = min(child[up] + EVO_LEVEL, 1.0), max(child[down] - EVO_LEVEL, 0.0)
            kids.append(child)
        strategies = [_at(plan, k, target, scaled, f"evo-{generation:03d}") for k in kids]
        first = np.array(fitness(strategies, 1))
        top = [int(i) for i in np.argsort(first, kind="stable")[:EVO_SURVIVORS]]
        losses = fitness([strategies[i] for i in top], -1)
        winner = top[int(np.argmin(losses))]
        if min(losses) < all_batches:
            parent, all_batches = kids[winner], min(losses)
            pool.add([strategies[winner]])
    return pool.out


def promote(scored: list[tuple[Strategy, float, float | None]], k: int) -> list[Strategy]:
    """The ``k`` best by validation score, ties broken by the lower validation loss (when there is one)."""
    return [c for c, _, _ in sorted(scored, key=lambda s: (-s[1], 0.0 if s[2] is None else s[2]))[:k]]


def shortlist(scored: list[tuple[Strategy, float, float | None]], k: int, usual_first: bool) -> list[Strategy]:
    """Rung 1's ``k`` candidates: the best one-shot scores; with ``usual_first``, the usual allocations (held
    exactly) first and the best one-shot scores after them, for a pattern whose fine-tuning recovers more of
    some allocations' one-shot loss than of others' (its one-shot scores would drop the best one early)."""
    if not usual_first:
        return promote(scored, k)
    return _usual_first([s for s in scored if is_usual(s[0])], scored, k, places=k)


def _usual_first(usual: list[tuple[Strategy, float, float | None]], scored: list[tuple[Strategy, float, float | None]],
                 k: int, places: int) -> list[Strategy]:
    """The best ``places`` of ``usual``, then the best of the other candidates of ``scored`` up to ``k``."""
    first = promote(usual, places)
    return first + promote([s for s in scored if not is_usual(s[0])], k - len(first))


def is_usual(strategy: Strategy | dict | str) -> bool:
    """One of the allocations users already have, exactly as they are (``<signal>/exact-<name>``): a candidate,
    its record or its name."""
    name = strategy if isinstance(strategy, str) else strategy.name if isinstance(strategy, Strategy) \
        else strategy["name"]
    return name.split("/", 1)[-1].startswith(EXACT)


def finalists(config: RunConfig, ranked: list[tuple[Strategy, float, float | None]], full: int,
              oneshot: list[tuple[Strategy, float, float | None]]) -> list[Strategy]:
    """The last rung: the ``full`` best of ``ranked``; with ``pick == "paired"`` the best of the usual
    allocations always among them (by its short fine-tune, or by its one-shot score where none was promoted:
    it is what the pick falls back to), the others the best challengers."""
    usual = [r for r in ranked if is_usual(r[0])] or [r for r in oneshot if is_usual(r[0])]
    if config.pick != "paired" or not usual:
        return promote(ranked, full)
    return _usual_first(usual, ranked, full, places=1)


def by_validation(record: dict) -> tuple[float, float]:
    """The order every pick on validation uses (a search's finalists, the best baseline): the score, then the
    lower loss."""
    return record["val_score"], -(record["val_loss"] or 0.0)


def best_baselines(records: Sequence[dict]) -> list[dict]:
    """Per target and seed, the baseline best on validation (in the order a search picks its finalists): what
    a search's pick is compared with."""
    best: dict[tuple, dict] = {}
    for r in records:
        if r["method"] == "baseline" and r.get("rung") is None:
            at = (r["target"], r["seed"])
            if at not in best or by_validation(r) > by_validation(best[at]):
                best[at] = r
    return list(best.values())


def pick_final(config: RunConfig, finals: list[dict]) -> dict:
    """The search's pick among its fully fine-tuned finalists (records): the best validation score, the lowest
    validation loss, or (``paired``) the best usual allocation unless the challenger best on validation beats
    it on the same validation samples beyond McNemar's test (each record's ``val_metrics["correct"]``); where
    a task gives no per-sample results, the usual allocation stays: no evidence, no switch."""
    if config.pick == "loss" and all(r["val_loss"] is not None for r in finals):
        return min(finals, key=lambda r: (r["val_loss"], -r["val_score"]))
    usual = [r for r in finals if is_usual(r)]
    if config.pick != "paired" or not usual:
        return max(finals, key=by_validation)
    incumbent = usual[0]
    challenger = max((r for r in finals if r is not incumbent), key=by_validation, default=None)
    if challenger is None or challenger["val_score"] <= incumbent["val_score"]:
        return incumbent
    right = [r.get("val_metrics", {}).get("correct") for r in (challenger, incumbent)]
    if None in right:
        log.warning("pick 'paired': the evaluation gives no per-sample results on validation, so %s cannot be shown "
                    "better than %s and the usual allocation is kept; return 'correct' (a string of 0/1 per "
                    "sample) from evaluate, or pick 'score'", challenger["name"], incumbent["name"])
        return incumbent
    return challenger if beats(*right) else incumbent
