"""Ignition configs: raw Ignition checks (validate.py) and Butane -> Ignition (butane.py)."""

from appliance.ignition.validate import (
    SUPPORTED_VERSIONS, InvalidIgnition, RawIgnition, check_ignition, check_raw_ignition,
)

__all__ = ["SUPPORTED_VERSIONS", "InvalidIgnition", "RawIgnition", "check_ignition", "check_raw_ignition"]
