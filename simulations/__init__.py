"""Population experiments on one machine: baselines, the centralized comparison, the federated
simulation runner and reports."""
