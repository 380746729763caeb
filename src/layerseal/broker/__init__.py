"""layerseal.broker."""
