"""ocicrypt keyprovider bridge: skopeo, podman, buildah, CRI-O and containerd use layerseal's broker.

``protocol`` parses the keyprovider JSON (pure), ``params`` the ``provider:NAME:REST``
syntax (pure), ``pbcodec`` the one-field gRPC messages (pure), ``provider`` runs keywrap
and keyunwrap against the broker, ``grpcserver`` serves ``keyprovider.KeyProviderService``.
Imports stay lazy: ocicrypt starts the cmd tool once per layer.
"""
