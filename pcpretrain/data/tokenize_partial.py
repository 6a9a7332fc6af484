"""The visible ``<out>.partial`` directory of an unfinished ``pcpretrain tokenize``, so a killed run
continues where it stopped when the same command runs again.

It is a token-shards directory in the making: ``tokenize.json`` (the run's settings, written with the
tokenizer copy before the directory appears under its name), the finished shards (see
:class:`~pcpretrain.data.token_shard_writer.ShardFile`), hidden temporary files of shards that were
being written, and finally ``meta.json``, after which it is renamed to ``<out>``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcpretrain.data.stream import DocumentShards
from pcpretrain.data.token_shard_writer import TEMP_GLOB, save_tokenizer, unique_path, write_json_durably
from pcpretrain.files import fsync_dir

if TYPE_CHECKING:
    from pcpretrain.data.tokenizer_base import Tokenizer

SETTINGS_FILE = "tokenize.json"

log = logging.getLogger(__name__)


class PartialRunMismatch(ValueError):
    """An unfinished run's directory holds work done with other settings than those now asked for."""


def partial_dir(out_dir: Path) -> Path:
    """Where the unfinished output of ``out_dir`` lives: beside it, named ``<name>.partial``."""
    return out_dir.with_name(f"{out_dir.name}.partial")


def run_settings(source: DocumentShards, tokenizer: Tokenizer, description: str) -> dict[str, Any]:
    """Everything that decides the output's bytes: a run continues another only if these are equal."""
    return {
        "source": description,
        "input_shards": [source.describe_shard(index) for index in range(source.num_shards)],
        "tokenizer_kind": tokenizer.kind,
        "tokenizer_sha256": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
    }


def open_partial(partial: Path, settings: dict[str, Any], tokenizer: Tokenizer, overwrite: bool) -> bool:
    """Continue ``partial`` if it was started with ``settings``, else create it; True when continued.

    A partial directory started with other settings is refused (or, with ``overwrite``, discarded):
    mixing shards of two settings would give a corpus neither run describes.
    """
    if partial.exists():
        recorded = _recorded_settings(partial)
        if recorded == settings:
            for stray in partial.glob(TEMP_GLOB):  # shards a killed process was writing
                stray.unlink(missing_ok=True)
            return True
        if not overwrite:
            raise PartialRunMismatch(_mismatch_message(partial, recorded, settings))
        log.info("discarding %s: it was started with other settings (overwrite)", partial)
        shutil.rmtree(partial)
    _create(partial, settings, tokenizer)
    return False


def _create(partial: Path, settings: dict[str, Any], tokenizer: Tokenizer) -> None:
    """Settings and tokenizer copy first, in a hidden directory renamed to ``partial``: a directory
    under that name always says what it holds."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_path(partial.parent, f".{partial.name}.tmp-")
    tmp.mkdir()
    try:
        save_tokenizer(tokenizer, tmp)
        write_json_durably(tmp / SETTINGS_FILE, settings)
        tmp.replace(partial)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(partial.parent)


def _recorded_settings(partial: Path) -> dict[str, Any] | None:
    """The settings an earlier run recorded, or None when the directory has none readable."""
    try:
        recorded = json.loads((partial / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _mismatch_message(partial: Path, recorded: dict[str, Any] | None, settings: dict[str, Any]) -> str:
    fix = (
        "run the command it was started with to continue it, pass --overwrite (overwrite=True) to "
        f"discard it and start over, or delete {partial}"
    )
    if recorded is None:
        return f"{partial} exists but has no readable {SETTINGS_FILE}: not an unfinished tokenize run; {fix}"
    differences = "; ".join(
        f"{key} was {_short(recorded.get(key))}, now {_short(settings[key])}"
        for key in settings
        if recorded.get(key) != settings[key]
    )
    return f"{partial} holds an unfinished tokenize run with other settings ({differences}); {fix}"


def _short(value: Any, limit: int = 300) -> str:
    """repr, cut so a list of thousands of input files stays readable."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
