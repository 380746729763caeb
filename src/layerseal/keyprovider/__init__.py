"""layerseal.keyprovider."""
