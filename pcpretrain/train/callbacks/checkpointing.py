"""Writes checkpoints at the configured interval, at ``trainer.stop_at`` and at the schedule's end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcpretrain import checkpoint as ckpt
from pcpretrain.config import CheckpointConfig
from pcpretrain.data.tokenizer import Tokenizer
from pcpretrain.export import run_info, write_merged_model
from pcpretrain.train.callbacks.base import Callback

if TYPE_CHECKING:
    from pcpretrain.config import TrainConfig
    from pcpretrain.train.trainer import Trainer

log = logging.getLogger(__name__)


class Checkpointing(Callback):
    """Saves the forms due at each step; prunes old ones. Never runs after a failed step."""

    def __init__(
        self,
        cfg: TrainConfig,
        root: Path,
        config_yaml: str,
        assignment_json: str,
        tokenizer: Tokenizer,
        resumed_from: Path | None = None,
    ) -> None:
        self.ckpt_cfg: CheckpointConfig = cfg.checkpoint
        self.cfg = cfg
        self.root = root
        self.config_yaml = config_yaml
        self.assignment_json = assignment_json
        self.tokenizer = tokenizer
        self.resumed_from = resumed_from
        self.saved: dict[str, Path] = {}

    def forms_due(self, trainer: Trainer) -> set[str]:
        step = trainer.state.step
        forms: set[str] = set()
        if self.ckpt_cfg.every and step % self.ckpt_cfg.every == 0:
            forms.update(self.ckpt_cfg.forms)
        if trainer.schedule_finished:
            forms.update(self.ckpt_cfg.final_forms)
        elif trainer.at_last_step:
            forms.add("unmerged")
        return forms

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.root)
        if self.resumed_from is not None and trainer.at_last_step:
            self.complete_last_save(trainer)

    def complete_last_save(self, trainer: Trainer) -> None:
        """A run resumed at its last step: write what its final save did not (the merged form if the
        process was killed while writing it) and prune, as the uninterrupted run would have."""
        assert self.resumed_from is not None
        self.saved["unmerged"] = self.resumed_from
        forms = self.forms_due(trainer) - {"unmerged"}
        merged = ckpt.merged_dir(self.root, trainer.state.step)
        if "merged" in forms:
            if merged.is_dir():
                self.saved["merged"] = merged
            else:
                log.warning("the final save of step %d lacks its merged form: writing it", trainer.state.step)
                self.save_merged(trainer)
        if trainer.accelerator.is_main_process:
            ckpt.prune(self.root, self.ckpt_cfg.keep_last)

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        forms = self.forms_due(trainer)
        if "unmerged" in forms:
            self.save_unmerged(trainer)
        if "merged" in forms:
            self.save_merged(trainer)
        if forms and trainer.accelerator.is_main_process:
            ckpt.prune(self.root, self.ckpt_cfg.keep_last)

    def save_unmerged(self, trainer: Trainer) -> None:
        trainer.confirm_finite()
        path = ckpt.save_unmerged(
            trainer.accelerator,
            self.root,
            trainer.state.step,
            trainer.state.to_dict(),
            trainer.train_batches.state_dict(),
            self.config_yaml,
            self.tokenizer,
            self.ckpt_cfg.verify,
            self.assignment_json,
        )
        self.saved["unmerged"] = path
        log.info("saved checkpoint %s", path)

    def save_merged(self, trainer: Trainer) -> None:
        trainer.confirm_finite()
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
        out = ckpt.merged_dir(self.root, trainer.state.step)
        if trainer.accelerator.is_main_process:
            write_merged_model(
                state_dict,
                model_cfg=self.cfg.model,
                pc_degree=self.cfg.pc.degree,
                tokenizer=self.tokenizer,
                out_dir=out,
                info=run_info(self.cfg, trainer.state.step),
            )
            log.info("saved merged model %s", out)
        trainer.accelerator.wait_for_everyone()
        self.saved["merged"] = out
