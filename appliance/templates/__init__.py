"""Templates: Go's text/template (the subset matchbox data dirs use) and Go's printing; bootd's own iPXE script (jinja2)."""

from appliance.templates.gofmt import format_value

__all__ = ["format_value"]
