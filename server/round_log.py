"""The per-round JSONL log: one JSON object per completed round (format in docs/formats.md).

A round's line is written before its checkpoint. On resume, lines of rounds after the
checkpoint's round (written by a server that stopped before checkpointing them) are
dropped, so the file always lists each round once, in order, whatever was interrupted.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pic_core.atomic import atomic_write_text
from pic_core.protocol import json_safe

LOG_FILE = "rounds.jsonl"


def read_rounds(path: Path) -> list[dict]:
    """The round records of a log ([] when there is none yet); ValueError naming file:line for a
    line that is not a JSON object with a 'round' key."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not a JSON line ({exc})") from None
        if not isinstance(record, dict) or "round" not in record:
            raise ValueError(f"{path}:{number}: a round record must be an object with a 'round' key")
        records.append(record)
    return records


class RoundLog:
    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, last_round: int) -> None:
        """Keep only rounds <= last_round (a fresh run passes -1 and empties the file: round 0 is the
        initial evaluation, written again by that run)."""
        kept = [r for r in read_rounds(self.path) if int(r.get("round", 0)) <= last_round]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def append(self, record: dict) -> None:
        """One line, fsynced before the round's checkpoint is written (the module docstring says why)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(json_safe(record), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
