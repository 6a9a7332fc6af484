"""The small, JSON-serialisable part of a run's progress that checkpoints carry."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TrainState:
    """Counters and identifiers that let a resumed run continue exactly where it stopped."""

    step: int = 0
    tokens: int = 0
    wandb_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TrainState:
        return cls(**{key: payload[key] for key in ("step", "tokens", "wandb_run_id") if key in payload})
