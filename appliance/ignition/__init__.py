"""Ignition configs: raw Ignition checks (validate.py) and Butane -> Ignition (butane.py)."""

from appliance.ignition.validate import (
    SUPPORTED_VERSIONS, InvalidIgnition, RawIgnition, check_ignition, check_raw_ignition,
)

# matchbox's isIgnition: a file named so is raw Ignition, never a template
RAW_IGNITION_SUFFIXES = (".ign", ".ignition")

__all__ = ["RAW_IGNITION_SUFFIXES", "SUPPORTED_VERSIONS", "InvalidIgnition", "RawIgnition", "check_ignition", "check_raw_ignition"]
