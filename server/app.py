"""The fedpic ServerApp (Flower Message API): the federated prior stage.

Run config keys ([tool.flwr.app.config] in pyproject.toml, `flwr run . --run-config`, or
bound by `fedpic simulate`):
  config       YAML config: a file (relative to the working directory) or a shipped config's name (`demo`)
  config-json  the full fedpic config as JSON (wins over `config`; what `fedpic simulate` sends)
  overrides    "federation.rounds=3 federation.fraction=0.5": dotted config overrides (like --set)
  out-dir      where rounds.jsonl, checkpoint.pt and model.pt go
  init-model   model file to start from (from `fedpic pretrain`); "" for fresh weights
  resume       true: continue from out-dir/checkpoint.pt
  devices      expected number of devices (0: wait until the connected count settles)
  pool-population  device-pool simulation (server/sampling.py): sample from this many users and name
               one per message; the nodes are a pool that plays them (0: one node per device)
Device-side keys (data-dir, state-dir, device, threads) are read by the ClientApp.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

import pic_core
from pic_core.config import Config, ConfigError, from_dict, load_config, parse_overrides

from .loop import ServerSettings, run_federation

log = logging.getLogger(__name__)


def _path(value: Any) -> Optional[Path]:
    return Path(str(value)).expanduser() if value not in (None, "") else None


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def resolve_config(run_config: Mapping[str, Any]) -> Config:
    if run_config.get("config-json"):
        return from_dict(Config, json.loads(str(run_config["config-json"])), "config-json")
    overrides = parse_overrides(str(run_config.get("overrides") or "").split())
    return load_config(_path(run_config.get("config")), overrides=overrides)


def server_settings(run_config: Mapping[str, Any]) -> ServerSettings:
    out_dir = _path(run_config.get("out-dir"))
    if out_dir is None:
        raise ConfigError("run config: out-dir is required (where the checkpoint and model go)")
    return ServerSettings(config=resolve_config(run_config), out_dir=out_dir,
                          init_model=_path(run_config.get("init-model")), resume=_bool(run_config.get("resume")),
                          devices=int(run_config.get("devices") or 0),
                          pool_population=int(run_config.get("pool-population") or 0))


def make_server_app(bound: Optional[Mapping[str, Any]] = None) -> ServerApp:
    """A ServerApp whose run config is `bound` on top of Flower's."""
    bound = dict(bound or {})
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        log.info("fedpic ServerApp from %s; pic_core from %s", Path(__file__).parent, Path(pic_core.__file__).parent)
        run_federation(grid, server_settings({**context.run_config, **bound}))

    return server_app


app = make_server_app()
