"""Population experiments on one machine: the federated simulation runner (and, later, baselines and reports)."""
