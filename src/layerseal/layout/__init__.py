"""On-disk image storage: OCI image layouts and the shared content-addressed blob store."""
