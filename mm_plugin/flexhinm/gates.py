"""Learnable 2:4 choices on the hybrid pattern's 2:4 region: mask modules for gradual FlexHiNM.

Why: magnitude decides *which* 2 of 4 survive once and for all; a gate lets the task loss decide.
Both formulations here share one base (:class:`NMGate`: regions, gradual hardening, the exact 2:4
choice evaluation uses) and are registered in :data:`GATES`:

* ``hard_concrete`` (seed 004; Louizos et al. 2018): one gate per weight, ``u ~ U(0,1)``,
  ``s = sigmoid((log u - log(1-u) + log_alpha) / beta)``, ``z = clamp(s (zeta - gamma) + gamma, 0, 1)``,
  expected L0 ``sigmoid(log_alpha - beta log(-gamma/zeta))``; a penalty pulls every group of 4
  towards 2 expected-open gates. Gates start open (ordered by magnitude), so nothing is pruned early.
* ``patterns`` (MaskLLM, Fang et al., NeurIPS 2024): per group of 4, a categorical over the six 2:4
  patterns, initialised from the magnitude choice, so training never sees a dense 2:4 region. By
  default the forward pass uses the current choice itself and only the gradient is the softmax
  mixture's (straight-through, no Gumbel noise): training then runs on exactly the masks evaluation
  and hardening use, from the first step. MaskLLM's Gumbel-softmax samples (``noise=True``) explore,
  but on a short budget that noise cost more accuracy than the choices it found (docs/flexhinm.md).

A gate is a mask module of the project's single mechanism (``masks.set_mask_module_``): the weight
the layer sees is ``original * z``. Outside the region, ``z`` is a fixed keep/drop mask (dense and
vector-pruned vectors, and groups already hardened). Evaluation mode, and training once every group
is hardened, use :meth:`NMGate.hard_mask`: exactly the mask :func:`harden_` attaches at the end.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ValidationError, check_fraction
from ..masks import MaskModule
from ..registry import Registry
from .layout import M, N, as_groups, from_groups
from .partition import check_nm_shape

#: The six 2:4 patterns, ``(6, 4)`` floats: row ``k`` keeps the two positions of combination ``k``.
PATTERNS_24 = torch.tensor(
    [[float(i in c) for i in range(M)] for c in itertools.combinations(range(M), N)]
)


def top2(scores: torch.Tensor) -> torch.Tensor:
    """Exact 2:4 keep-mask (bool, weight-shaped) keeping the two largest ``scores`` of every group."""
    g = as_groups(scores.detach())
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.topk(N, dim=-1).indices, True)
    return from_groups(keep, tuple(scores.shape))


class NMGate(MaskModule):
    """Base of the learnable gates: regions, hardening and the exact 2:4 choice (see module doc)."""

    #: ``(start, end)`` temperature of a schedule that does not set its own.
    default_temperature: tuple[float, float] = (1.0, 1.0)

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        shape = tuple(weight.shape)
        check_nm_shape(shape, "a learnable 2:4 gate's weight")
        dev = weight.device
        self.register_buffer("region", torch.zeros(shape, dtype=torch.bool, device=dev))  # learnable entries
        self.register_buffer("fixed", torch.ones(shape, dtype=torch.bool, device=dev))  # keep-mask elsewhere
        self.register_buffer("hardened", torch.zeros(shape, dtype=torch.bool, device=dev))
        self.register_buffer("initial", torch.zeros(shape, dtype=torch.bool, device=dev))  # choice at entry
        self.register_buffer("temperature", torch.tensor(self.default_temperature[0], device=dev))
        self.register_buffer("movement", torch.zeros(shape, device=dev))  # see :meth:`track_movement_`
        self.force_sampling = False  # see :func:`sampling`
        self.tracking = False
        self.pruned_gradient = False  # see :meth:`forward`

    # -- what a formulation defines -----------------------------------------------------------------
    def _reset_(self, weight: torch.Tensor, groups: torch.Tensor) -> None:
        """(Re)initialise the learned parameters of ``groups`` ``(rows, groups)`` from ``weight``."""
        raise NotImplementedError

    def choice(self) -> torch.Tensor:
        """Exact 2:4 keep-mask (bool, weight-shaped) the learned parameters stand for."""
        raise NotImplementedError

    def sample(self) -> torch.Tensor:
        """Training-time mask values in ``[0, 1]`` (weight-shaped; only the region is used)."""
        raise NotImplementedError

    def expected_open(self) -> torch.Tensor:
        """Expected number of open gates per group, ``(rows, groups)``."""
        raise NotImplementedError

    def confidence(self) -> torch.Tensor:
        """How settled each group's choice is, ``(rows, groups)``: hardening freezes the largest first."""
        raise NotImplementedError

    def penalty(self) -> torch.Tensor:
        """Sum over learnable groups of a pull towards 2 of 4 (zero for formulations exact by design)."""
        return self.region_groups().sum() * 0.0

    # -- shared ----------------------------------------------------------------------------------------
    def region_groups(self) -> torch.Tensor:
        return as_groups(self.region).all(-1)

    def n_region_groups(self) -> int:
        return int(self.region_groups().sum())

    def set_temperature_(self, value: float) -> None:
        self.temperature.fill_(float(value))

    @torch.no_grad()
    def set_regions_(self, weight: torch.Tensor, nm_region: torch.Tensor, keep_outside: torch.Tensor) -> None:
        """New partition: ``nm_region`` is learnable (groups new to it start from magnitude), the rest fixed."""
        nm_region = nm_region.to(self.region.device, torch.bool)
        new = as_groups(nm_region & ~self.region).all(-1)
        if bool(new.any()):
            self._reset_(weight, new)
            entered = from_groups(new[..., None].expand(*new.shape, M), tuple(self.region.shape))
            self.initial.copy_(torch.where(entered, top2(weight.abs()), self.initial))
        self.region.copy_(nm_region)
        self.fixed.copy_(keep_outside.to(self.fixed.device, torch.bool) & ~nm_region)
        self.hardened.zero_()

    def hard_mask(self) -> torch.Tensor:
        """The binary keep-mask this gate stands for: its 2:4 choice in the region, fixed elsewhere."""
        return torch.where(self.region, self.choice(), self.fixed)

    def track_movement_(self, on: bool = True) -> None:
        """Accumulate ``-dL/dw_eff * w`` over training steps into ``movement`` (Sanh et al. 2020).

        Why: the first-order loss change of removing a weight, summed over the steps it was trained; the
        gradient is taken at the masked weight the layer sees, so pruned weights keep a score too and a
        re-partition can bring them back.
        """
        self.tracking = bool(on)

    def _accumulate(self, weight: torch.Tensor) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            self.movement.sub_(grad.detach() * weight)
        return hook

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if (self.training or self.force_sampling) and bool(self.region.any()):
            z = torch.where(self.region, self.sample().to(weight.dtype), self.fixed.to(weight.dtype))
        else:
            z = self.hard_mask().to(weight.dtype)
        out = weight * z
        if self.pruned_gradient and self.training:
            # straight-through for the weights (SR-STE, Zhou et al. 2021): the value is unchanged, but
            # pruned weights get the gradient they would have if kept, so a re-partition can regrow them
            out = out + (1 - z.detach()) * (weight - weight.detach())
        if self.tracking and self.training and out.requires_grad:
            out.register_hook(self._accumulate(weight.detach()))
        return out

    @torch.no_grad()
    def harden_fraction_(self, fraction: float) -> int:
        """Freeze the most confident learnable groups until ``fraction`` of this gate's 2:4 groups are hard.

        A frozen group keeps its current choice as a fixed mask and stops learning. Returns how many
        groups this call froze.
        """
        fraction = check_fraction(fraction, "hardening fraction", upper_inclusive=True)
        active = self.region_groups()
        done = as_groups(self.hardened).all(-1)
        total = int(active.sum() + done.sum())
        want = math.ceil(fraction * total) - int(done.sum())
        if want <= 0 or not bool(active.any()):
            return 0
        conf = self.confidence().masked_fill(~active, float("-inf")).reshape(-1)
        pick = conf.topk(min(want, int(active.sum()))).indices
        chosen = torch.zeros_like(conf, dtype=torch.bool)
        chosen[pick] = True
        chosen = chosen.reshape(active.shape)[..., None].expand(*active.shape, M)
        elem = from_groups(chosen, tuple(self.region.shape))
        self.fixed.copy_(torch.where(elem, self.choice(), self.fixed))
        self.region.copy_(self.region & ~elem)
        self.hardened.copy_(self.hardened | elem)
        return int(pick.numel())


@contextmanager
def sampling(model: nn.Module) -> Iterator[None]:
    """Inside: every gate of ``model`` samples as in training, even in eval mode (norms, dropout stay
    in eval), so a caller's evaluation measures what the training forward pass computes."""
    gs = [m for m in model.modules() if isinstance(m, NMGate)]
    for g in gs:
        g.force_sampling = True
    try:
        yield
    finally:
        for g in gs:
            g.force_sampling = False


GATES: Registry[type[NMGate]] = Registry("learnable 2:4 gate")


@GATES.register("hard_concrete")
class HardConcreteGate(NMGate):
    """One Hard Concrete gate per weight (seed 004); ``temperature`` is ``beta``."""

    default_temperature = (2 / 3, 0.1)

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        gamma: float = -0.1,
        zeta: float = 1.1,
        init_open: float = 3.0,
        init_spread: float = 1.0,
    ) -> None:
        super().__init__(weight)
        if not (gamma < 0 and zeta > 1):
            raise ValidationError(f"Hard Concrete needs gamma < 0 and zeta > 1, got gamma={gamma}, zeta={zeta}")
        self.gamma, self.zeta = float(gamma), float(zeta)
        self.init_open, self.init_spread = float(init_open), float(init_spread)
        self.log_alpha = nn.Parameter(torch.full(tuple(weight.shape), self.init_open, device=weight.device))

    def _reset_(self, weight: torch.Tensor, groups: torch.Tensor) -> None:
        """Open gates (``init_open``), ordered by magnitude inside each group by up to ``+-init_spread``."""
        g = as_groups(weight.detach().abs())
        rank = g.argsort(dim=-1).argsort(dim=-1).float()  # 0 = smallest, M-1 = largest
        init = self.init_open + (rank / (M - 1) * 2 - 1) * self.init_spread
        la = as_groups(self.log_alpha.data)
        la = torch.where(groups[..., None].to(la.device), init.to(la), la)
        self.log_alpha.data.copy_(from_groups(la, tuple(self.log_alpha.shape)))

    def choice(self) -> torch.Tensor:
        return top2(self.log_alpha)

    def sample(self) -> torch.Tensor:
        u = torch.rand_like(self.log_alpha).clamp_(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (1 - u).log() + self.log_alpha) / self.temperature)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0, 1)

    def expected_l0(self) -> torch.Tensor:
        """Probability each gate is non-zero."""
        return torch.sigmoid(self.log_alpha - self.temperature * math.log(-self.gamma / self.zeta))

    def expected_open(self) -> torch.Tensor:
        return as_groups(self.expected_l0()).sum(-1)

    def confidence(self) -> torch.Tensor:
        srt = as_groups(self.log_alpha.detach()).sort(dim=-1, descending=True).values
        return srt[..., N - 1] - srt[..., N]

    def penalty(self) -> torch.Tensor:
        """Sum over learnable groups of ``(expected open gates - 2)^2``: zero exactly at 2 of 4."""
        groups = self.region_groups()
        return ((self.expected_open() - N) ** 2 * groups).sum()


@GATES.register("patterns")
class PatternGate(NMGate):
    """A categorical over the six 2:4 patterns per group (MaskLLM); ``temperature`` is the softmax's.

    ``straight_through``: the forward pass uses the chosen pattern (binary), the backward pass the
    gradient of the soft mixture of patterns; ``False`` trains on the mixture itself.
    ``noise``: Gumbel noise on the logits (MaskLLM's sampling). Without it (the default), the chosen
    pattern is the current argmax, so training uses exactly the evaluation masks.
    """

    default_temperature = (1.0, 0.05)

    def __init__(self, weight: torch.Tensor, *, prior: float = 30.0, straight_through: bool = True,
                 noise: bool = False) -> None:
        super().__init__(weight)
        self.prior = float(prior)
        self.straight_through, self.noise = bool(straight_through), bool(noise)
        rows, groups, _ = as_groups(weight).shape
        self.logits = nn.Parameter(torch.zeros(rows, groups, len(PATTERNS_24), device=weight.device))
        self.register_buffer("patterns", PATTERNS_24.to(weight.device))

    def _reset_(self, weight: torch.Tensor, groups: torch.Tensor) -> None:
        """Logits ``prior x`` the pattern's share of the group's ``|w|``: the magnitude choice leads.

        Why 30: the gates' learning rate moves a logit by about 0.4 a step; with a weak prior (3) about
        45 % of the groups left their magnitude choice in the first epoch, which a short budget on the
        demo Swin could not recover from (docs/flexhinm.md, ablation picked on validation).
        """
        g = as_groups(weight.detach().abs()).float()
        share = g / g.sum(-1, keepdim=True).clamp_min(1e-12)
        init = self.prior * (share @ self.patterns.t()) * (M / N)  # 1.0 for a flat group's every pattern
        self.logits.data.copy_(torch.where(groups[..., None].to(init.device), init.to(self.logits), self.logits.data))

    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(-1)

    def choice(self) -> torch.Tensor:
        keep = self.patterns[self.logits.detach().argmax(-1)].bool()
        return from_groups(keep, tuple(self.region.shape))

    def sample(self) -> torch.Tensor:
        """A softmax mixture of the six patterns (Gumbel-softmax with ``noise``); with ``straight_through``
        the forward value is the top pattern itself (exact 2:4, binary) and the gradient that of the mixture
        (Jang et al. 2017)."""
        logits = self.logits
        if self.noise:
            u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
            logits = logits - (-u.log()).log()
        y = (logits / self.temperature).softmax(-1)
        if self.straight_through:
            hard = torch.zeros_like(y).scatter_(-1, y.argmax(-1, keepdim=True), 1.0)
            y = hard + (y - y.detach())  # exactly the pattern forward, the mixture's gradient backward
        return from_groups(y @ self.patterns, tuple(self.region.shape))

    def expected_open(self) -> torch.Tensor:
        return (self.probabilities() @ self.patterns).sum(-1)

    def confidence(self) -> torch.Tensor:
        top = self.logits.detach().topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]
