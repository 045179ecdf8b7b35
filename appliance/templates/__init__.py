"""Templates: bootd's own scripts (jinja2) and Go's value printing for matchbox-style templates."""

from appliance.templates.gofmt import format_value

__all__ = ["format_value"]
