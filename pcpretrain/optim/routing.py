"""Parameter categories by declared rules, and the optimizer groups they become.

Rules are matched in order, first match wins, on the parameter's name and shape, never on sizes
such as the vocabulary (a small vocabulary must not send embeddings to Muon):

    pc_gamma       *.pc_gamma                 the PC layers' learnable scalars
    embedding      *embed_tokens.weight       token embeddings
    lm_head        lm_head.weight             output projection
    vector         any parameter with ndim<2  norm weights, biases
    hidden_matrix  everything else (ndim>=2)  attention and FFN matrices: the only ones Muon takes
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from pcpretrain.choices import MUON_CATEGORIES, PARAMETER_CATEGORIES
from pcpretrain.config import CategoryConfig, OptimizerConfig

log = logging.getLogger(__name__)


RULES: tuple[tuple[str, Callable[[str, nn.Parameter], bool]], ...] = (
    ("pc_gamma", lambda name, p: fnmatch.fnmatchcase(name, "*.pc_gamma")),
    ("embedding", lambda name, p: fnmatch.fnmatchcase(name, "*embed_tokens.weight")),
    ("lm_head", lambda name, p: fnmatch.fnmatchcase(name, "lm_head.weight")),
    ("vector", lambda name, p: p.ndim < 2),
    ("hidden_matrix", lambda name, p: p.ndim >= 2),
)


def categorize(name: str, param: nn.Parameter) -> str:
    """The first rule that matches ``name`` / ``param``."""
    return next(category for category, matches in RULES if matches(name, param))


@dataclass
class Group:
    """One optimizer parameter group and where its parameters came from."""

    category: str
    names: list[str]
    params: list[nn.Parameter]
    lr: float
    weight_decay: float
    use_muon: bool

    def as_param_group(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "names": self.names,
            "category": self.category,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "use_muon": self.use_muon,
        }


def route(model: nn.Module, cfg: OptimizerConfig) -> list[Group]:
    """One group per non-empty category, with the category's lr multiplier and weight decay."""
    members: dict[str, list[tuple[str, nn.Parameter]]] = {category: [] for category in PARAMETER_CATEGORIES}
    for name, param in model.named_parameters():
        if param.requires_grad:
            members[categorize(name, param)].append((name, param))
    groups = []
    for category, named in members.items():
        if not named:
            continue
        settings: CategoryConfig = getattr(cfg.categories, category)
        use_muon = cfg.name == "muon" and category in MUON_CATEGORIES
        base_lr = cfg.lr if use_muon or cfg.adamw_lr is None else cfg.adamw_lr
        decay = cfg.weight_decay if settings.weight_decay is None else settings.weight_decay
        groups.append(
            Group(
                category,
                [n for n, _ in named],
                [p for _, p in named],
                base_lr * settings.lr_mult,
                decay,
                use_muon,
            )
        )
    return groups


def describe(param_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The assignment as plain data: per group its optimizer, settings, count and parameter names."""
    return [
        {
            "category": g["category"],
            "optimizer": "muon" if g.get("use_muon") else "adamw",
            "lr": g.get("initial_lr", g["lr"]),
            "weight_decay": g["weight_decay"],
            "count": len(g["params"]),
            "numel": sum(p.numel() for p in g["params"]),
            "names": list(g["names"]),
        }
        for g in param_groups
    ]


def log_assignment(param_groups: list[dict[str, Any]]) -> None:
    """Log which parameters each optimizer group holds, once per run."""
    for entry in describe(param_groups):
        log.info(
            "optimizer group %-13s -> %-5s %3d tensors %11d params lr=%.3g wd=%.3g",
            entry["category"],
            entry["optimizer"],
            entry["count"],
            entry["numel"],
            entry["lr"],
            entry["weight_decay"],
        )
