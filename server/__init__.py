"""The HTTP server: ``create_app()`` builds the Flask app around a saved model."""

from server.app import StartupError, create_app

__all__ = ["StartupError", "create_app"]
