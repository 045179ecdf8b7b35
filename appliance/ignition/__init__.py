"""Ignition configs: validation of raw Ignition (Butane translation comes with the templates)."""

from appliance.ignition.validate import SUPPORTED_VERSIONS, InvalidIgnition, RawIgnition, check_raw_ignition

__all__ = ["SUPPORTED_VERSIONS", "InvalidIgnition", "RawIgnition", "check_raw_ignition"]
