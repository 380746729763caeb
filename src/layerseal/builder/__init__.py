"""layerseal.builder."""
