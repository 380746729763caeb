"""layerseal.engine."""
