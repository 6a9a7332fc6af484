"""Each list of allowed values has one home; the modules that implement a choice agree with it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

from helpers import compose_config

from pcpretrain import choices
from pcpretrain.config import CategoriesConfig, PCConfig, TrainerConfig
from pcpretrain.optim.newton_schulz import COEFFICIENT_SETS
from pcpretrain.optim.routing import RULES


def test_every_named_choice_has_its_implementation() -> None:
    assert tuple(COEFFICIENT_SETS) == choices.NS_COEFFICIENT_SETS
    assert tuple(category for category, _ in RULES) == choices.PARAMETER_CATEGORIES
    assert {f.name for f in fields(CategoriesConfig)} == set(choices.PARAMETER_CATEGORIES)
    assert choices.PC_DEGREES == (0, 1, 2, 3, 4)


def test_defaults_come_from_the_one_home() -> None:
    cfg = compose_config()
    assert tuple(cfg.pc.targets) == tuple(PCConfig().targets) == choices.DEFAULT_PC_TARGETS
    assert cfg.trainer.loss_chunk_tokens == TrainerConfig().loss_chunk_tokens == choices.LOSS_CHUNK_TOKENS


def test_config_validation_imports_no_torch() -> None:
    script = "import sys, pcpretrain.config, pcpretrain.choices; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", script], check=True)
