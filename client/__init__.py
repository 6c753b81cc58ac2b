"""fedpic's device side: the Flower ClientApp, local data and the personal state store."""
