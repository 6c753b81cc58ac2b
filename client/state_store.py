"""A device's personal state on its own disk: d_u, the personal head and d_u's optimizer state.

A ClientApp object lives for one message and Flower's context.state does not outlive a
run or a restarted SuperNode, so the state is a file in the device's folder. It is an
ordinary fedpic user-state file (usable with `fedpic evaluate/crop --user-state`), written
atomically (temp file + rename) after every round the device takes part in; its `extra`
holds the rounds it trained in and the Adam moments of d_u.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

from pic_core.checkpoint import CheckpointError, load_user_state, save_user_state
from pic_core.model import CropScorer

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

    def load(self, model: CropScorer) -> dict:
        """Put the stored d_u (and head) into `model`; {} and d_u = 0 when there is no state yet.

        Returns the stored `extra` (rounds, optimizer state). A state of another user or an
        unreadable file is an error: silently restarting from d_u = 0 would hide it.
        """
        model.personal.reset()
        if not self.exists():
            return {}
        with warnings.catch_warnings():
            # the shared model changes every round; the fingerprint warning is expected here
            warnings.simplefilter("ignore")
            meta = load_user_state(self.path, model)
        if meta.get("user_id") != self.user_id:
            raise CheckpointError(f"{self.path}: state of user {meta.get('user_id')!r}, this device is "
                                  f"{self.user_id!r}")
        return dict(meta.get("extra") or {})

    def save(self, model: CropScorer, rounds: list[int], optimizer_state: Optional[dict]) -> Path:
        """Write the model's PERSONAL tensors with the round history, atomically."""
        extra = {"rounds": [int(r) for r in rounds], "optimizer": optimizer_state or {}}
        return save_user_state(self.path, model, self.user_id, extra)
