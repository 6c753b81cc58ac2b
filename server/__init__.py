"""fedpic's server side: the Flower ServerApp, strategies, update screening, checkpoints and logs."""
