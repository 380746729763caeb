"""layerseal.kbs: the KBS wire protocol shared by the broker, engine, builder and keyprovider (no server)."""
