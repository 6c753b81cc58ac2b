"""One training round through Flower's SecAgg+ workflow: the server sees only the masked sum.

Flower 1.41's `SecAggPlusWorkflow` drives a legacy `Strategy` (configure_fit/aggregate_fit) in a
`LegacyContext`, not the message-API strategies of server/loop.py. This module builds that
context for one round: a legacy FedAvg samples the devices and ships the full model plus the
fedpic config as FitIns; devices (client/secagg.py) answer with float32 deltas of the uploaded
keys, which secaggplus_mod masks. The workflow unmasks only the weighted sum, so the returned
mean delta is all the server learns. What it cannot do: screen single updates (they are masked)
or use the strategies other than FedAvg and the DP wrapper (server/strategy.py refuses them).
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np

from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key as WorkflowKey
from flwr.serverapp import Grid

from pic_core.config import FederationConfig
from pic_core.exchange import FEDPIC_CONFIG

ALL_KEYS = "fedpic-secagg-keys"  # JSON list: the order of the FitIns parameters
UPLOAD_KEYS = "fedpic-secagg-upload"  # JSON list: the keys whose deltas a device sends, in order
# SecAgg+ quantizes values in [-range, range]; a device's per-weight delta of one round is far inside
CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 2**22  # step 2 * 8 / 2^22 ~ 4e-6 per weight


def secure_round(grid: Grid, server_round: int, arrays: dict[str, np.ndarray], upload: Sequence[str],
                 config_json: str, fed: FederationConfig, sampled: int, population: int) -> Optional[dict[str, np.ndarray]]:
    """The example-weighted mean delta of the uploaded keys from one SecAgg+ round; None when the
    protocol halted (fewer than 2 devices, or too many dropped to unmask)."""
    keys = list(arrays)
    fit_config = {FEDPIC_CONFIG: config_json, ALL_KEYS: json.dumps(keys), UPLOAD_KEYS: json.dumps(list(upload)),
                  "server-round": server_round}
    strategy = LegacyFedAvg(fraction_fit=sampled / population, min_fit_clients=sampled,
                            min_available_clients=sampled, fraction_evaluate=0.0,
                            on_fit_config_fn=lambda _: dict(fit_config))
    manager = SimpleClientManager()
    run_id = grid.run.run_id
    for node in sorted(grid.get_node_ids()):
        manager.register(GridClientProxy(node, grid, run_id))
    context = LegacyContext(Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            strategy=strategy, client_manager=manager)
    start = compat.parameters_to_arrayrecord(ndarrays_to_parameters([np.asarray(arrays[k]) for k in keys]), True)
    context.state.array_records[MAIN_PARAMS_RECORD] = start
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    workflow = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=0.67, clipping_range=CLIPPING_RANGE,
                                  quantization_range=QUANTIZATION_RANGE, timeout=fed.round_timeout)
    workflow(grid, context)
    result = context.state.array_records[MAIN_PARAMS_RECORD]
    if result is start:
        return None
    vectors = parameters_to_ndarrays(compat.arrayrecord_to_parameters(result, True))
    return {k: np.asarray(v, np.float32).reshape(np.shape(arrays[k])) for k, v in zip(upload, vectors, strict=True)}
