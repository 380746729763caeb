"""The ``layerseal`` command line (thin: parse, call one library function, print)."""
