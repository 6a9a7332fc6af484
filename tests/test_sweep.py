"""Sweep point names: only the keys the command line sweeps over."""

from __future__ import annotations

from pcpretrain.sweep import point_name, swept_keys


def test_swept_keys_are_those_with_several_values() -> None:
    overrides = [
        "pc.degree=0,4",
        "optimizer=adamw,muon",
        "model=tiny",
        "data.train_files=[a,b]",
        "seed=range(3)",
    ]
    assert swept_keys(overrides) == {"pc.degree", "optimizer", "seed"}


def test_point_name_keeps_swept_pairs_in_a_stable_order() -> None:
    keys = {"pc.degree", "optimizer"}
    assert (
        point_name(["pc.degree=4", "model=tiny", "optimizer=muon"], keys, 3) == "optimizer=muon,pc.degree=4"
    )
    assert point_name(["model=tiny"], keys, 3) == "job3"
