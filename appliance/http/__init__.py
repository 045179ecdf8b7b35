"""The read-only HTTP API: matchbox's routes, assets, and the machines' progress."""

from appliance.http.app import HttpContext, make_app

__all__ = ["HttpContext", "make_app"]
