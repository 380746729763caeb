"""Migration scripts, applied in order by ``layerseal.broker.migrate``."""
