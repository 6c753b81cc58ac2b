"""A device's personal state on its own disk: d_u, the personal head and d_u's optimizer state.

A ClientApp object lives for one message and Flower's context.state does not outlive a
run or a restarted SuperNode, so the state is a file in the device's folder. It is an
ordinary fedpic user-state file (usable with `fedpic evaluate/crop --user-state`), written
atomically (temp file + rename) after every round the device takes part in; its `extra`
holds the rounds it trained in, the Adam moments of d_u, and `previous`: the same state as
it was before the last round. A server that stops mid-round and resumes re-sends that
round; a device that already trained in it starts again from `previous`, so the re-run
round gives the same d_u as an uninterrupted run and each round is counted once.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Optional

from pic_core.checkpoint import CheckpointError, load_user_state, save_user_state
from pic_core.model import CropScorer
from pic_core.params import load_personal, personal_state

log = logging.getLogger(__name__)

STATE_FILE = "personal.pt"


class PersonalStateStore:
    """Load and save one user's PERSONAL tensors in `folder`."""

    def __init__(self, folder: Path, user_id: str):
        self.folder = Path(folder)
        self.user_id = user_id

    @property
    def path(self) -> Path:
        return self.folder / STATE_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, model: CropScorer, for_round: Optional[int] = None) -> dict:
        """Put the stored d_u (and head) into `model`; {} and d_u = 0 when there is no state yet.

        Returns the stored `extra` (rounds, optimizer state). With `for_round`, a state that
        already holds that round (or a later one: the server resumed from an earlier
        checkpoint) is rolled back to the one saved before it. A state of another user or an
        unreadable file is an error: silently restarting from d_u = 0 would hide it.
        """
        model.personal.reset()
        if not self.exists():
            return {}
        with warnings.catch_warnings():
            # the shared model changes every round; the fingerprint warning is expected here
            warnings.simplefilter("ignore")
            meta = load_user_state(self.path, model, strict=False)
        if meta.get("user_id") != self.user_id:
            raise CheckpointError(f"{self.path}: state of user {meta.get('user_id')!r}, this device is "
                                  f"{self.user_id!r}")
        extra = dict(meta.get("extra") or {})
        if for_round is None or not any(int(r) >= for_round for r in extra.get("rounds", [])):
            return extra
        previous = extra.get("previous") or {}
        if any(int(r) >= for_round for r in previous.get("rounds", [])) or "personal" not in previous:
            log.warning("%s: holds round %s and no state from before it; continuing from the newest state",
                        self.path, for_round)
            return extra
        model.personal.reset()
        load_personal(model, previous["personal"])
        log.info("%s: round %d is re-run (server resumed); starting again from the state before it",
                 self.path, for_round)
        return {"rounds": list(previous.get("rounds", [])), "optimizer": previous.get("optimizer") or {}}

    def snapshot(self, model: CropScorer, extra: dict) -> dict:
        """The state as loaded (before a round trains it), kept in the next save as `previous`."""
        return {"personal": {k: v.clone() for k, v in personal_state(model).items()},
                "rounds": [int(r) for r in extra.get("rounds", [])], "optimizer": extra.get("optimizer") or {}}

    def save(self, model: CropScorer, rounds: list[int], optimizer_state: Optional[dict],
             previous: Optional[dict] = None) -> Path:
        """Write the model's PERSONAL tensors with the round history (and `previous`), atomically."""
        extra = {"rounds": [int(r) for r in rounds], "optimizer": optimizer_state or {}, "previous": previous or {}}
        return save_user_state(self.path, model, self.user_id, extra)
