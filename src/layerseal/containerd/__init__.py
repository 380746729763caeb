"""containerd integration: layerseal as containerd's layer decryption stream processor.

``payload`` parses what containerd hands the processor on file descriptor 3 (pure),
``stanza`` renders the ``[stream_processors]`` and CRI settings (pure),
``contentstore`` finds a layer's descriptor in containerd's content store when no
payload came, ``decoder`` spools, authenticates and decrypts one layer.
Imports stay lazy: containerd starts the processor once per layer.

Place in the dependency order: beside ``keyprovider/`` (whose attested, cached broker
client it reuses); it may import keyprovider, crypto, image and errors, and only
``cli/`` imports it.
"""
