"""Population experiments on one machine: baselines, the centralized comparison, reports
(and the federated simulation runner)."""
