"""PackedBatches: shapes, epochs, exact resume, data-parallel layout; fixed validation batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pcpretrain.data.loader import PackedBatches, validation_batches

SEQ_LEN = 8
N_WINDOWS = 50


def make_tokens(n_windows: int = N_WINDOWS, seq_len: int = SEQ_LEN) -> np.ndarray:
    """Distinct token values, so a window is identified by its first token."""
    return np.arange(n_windows * seq_len + 1, dtype=np.uint16)


def window_ids(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0] // SEQ_LEN).tolist()


def step_ids(step: list[torch.Tensor]) -> list[int]:
    return [w for micro in step for w in window_ids(micro)]


def loader(**overrides) -> PackedBatches:
    args = {"seq_len": SEQ_LEN, "micro_batch_size": 2, "grad_accum_steps": 3, "seed": 7}
    return PackedBatches(make_tokens(), **{**args, **overrides})


def test_step_shapes_and_window_contents() -> None:
    data = loader()
    step = data.next_step()
    assert len(step) == 3
    tokens = torch.from_numpy(make_tokens().astype(np.int64))
    for micro in step:
        assert micro.dtype == torch.int64 and micro.shape == (2, SEQ_LEN + 1)
        for row in micro:
            start = int(row[0])
            assert torch.equal(row, tokens[start : start + SEQ_LEN + 1])
    assert data.tokens_per_step == 6 * SEQ_LEN


def test_epochs_cover_windows_without_repeats_and_reshuffle() -> None:
    data = loader()
    assert data.steps_per_epoch == N_WINDOWS // 6 == 8
    epochs = [[w for _ in range(8) for w in step_ids(data.next_step())] for _ in range(2)]
    assert data.epoch == 1
    for seen in epochs:
        assert len(seen) == len(set(seen)) == 48, "remainder of 2 windows dropped per epoch"
    assert epochs[0] != epochs[1], "each epoch has its own permutation"
    step = data.next_step()
    assert data.epoch == 2 and data.position == 1 and len(step_ids(step)) == 6


def test_seed_controls_order_and_shuffle_off_is_sequential() -> None:
    assert step_ids(loader(seed=7).next_step()) == step_ids(loader(seed=7).next_step())
    assert step_ids(loader(seed=7).next_step()) != step_ids(loader(seed=8).next_step())
    ordered = loader(shuffle=False)
    assert step_ids(ordered.next_step()) == list(range(6))
    assert step_ids(ordered.next_step()) == list(range(6, 12))


@pytest.mark.parametrize("stop_after", [3, 8, 11])
def test_resume_gives_identical_batches(stop_after: int) -> None:
    straight = loader()
    expected = [straight.next_step() for _ in range(20)]  # crosses two epoch boundaries

    first = loader()
    for _ in range(stop_after):
        first.next_step()
    state = json.loads(json.dumps(first.state_dict()))
    resumed = loader(seed=999)  # the saved seed wins
    resumed.load_state_dict(state)
    for want in expected[stop_after:]:
        got = resumed.next_step()
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_single_process_accumulation_equals_two_ranks() -> None:
    single = loader(grad_accum_steps=4)
    ranks = [loader(grad_accum_steps=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(15):  # several epochs of 6 steps each
        one = single.next_step()
        two = ranks[0].next_step() + ranks[1].next_step()
        assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_ranks_are_disjoint_within_a_step() -> None:
    world = 3
    ranks = [loader(grad_accum_steps=2, rank=r, world_size=world) for r in range(world)]
    for _ in range(ranks[0].steps_per_epoch):
        per_rank = [set(step_ids(r.next_step())) for r in ranks]
        union = set().union(*per_rank)
        assert len(union) == sum(map(len, per_rank)) == 2 * 2 * world


@pytest.mark.parametrize(
    ("key", "overrides"),
    [
        ("world_size", {"world_size": 2}),
        ("grad_accum_steps", {"grad_accum_steps": 2}),
        ("micro_batch_size", {"micro_batch_size": 3}),
        ("seq_len", {"seq_len": 4}),
    ],
)
def test_geometry_mismatch_is_refused(key: str, overrides: dict) -> None:
    state = loader().state_dict()
    other = loader(**overrides)
    with pytest.raises(ValueError, match=f"{key} was {state[key]} when saved, is {getattr(other, key)} now"):
        other.load_state_dict(state)


def test_changed_corpus_is_refused() -> None:
    state = loader().state_dict()
    other = PackedBatches(make_tokens(60), SEQ_LEN, 2, 3, seed=7)
    with pytest.raises(ValueError, match="num_tokens"):
        other.load_state_dict(state)


def test_too_small_corpus_says_how_much_is_needed() -> None:
    with pytest.raises(ValueError, match=r"81 tokens give 10 windows.*needs 16 windows = 129 tokens"):
        PackedBatches(make_tokens(10), SEQ_LEN, micro_batch_size=4, grad_accum_steps=2, seed=0, world_size=2)


def test_bad_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="rank"):
        loader(rank=2, world_size=2)


def test_validation_batches_are_fixed_and_ordered() -> None:
    tokens = make_tokens()
    first = validation_batches(tokens, SEQ_LEN, batch_size=16)
    again = validation_batches(tokens, SEQ_LEN, batch_size=16)
    assert [b.shape[0] for b in first] == [16, 16, 16, 2]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert [w for b in first for w in window_ids(b)] == list(range(N_WINDOWS))
    assert len(validation_batches(tokens, SEQ_LEN, batch_size=16, max_batches=2)) == 2
    with pytest.raises(ValueError, match="5 tokens"):
        validation_batches(tokens[:5], SEQ_LEN, batch_size=4)
