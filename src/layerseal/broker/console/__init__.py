"""The broker's operator console: server-rendered pages (``broker serve --console``) and
their JSON twins in the API, both reading the same view functions (:mod:`.views`)."""

from layerseal.broker.console.routes import CSP, api_routes, console_routes

__all__ = ["CSP", "api_routes", "console_routes"]
