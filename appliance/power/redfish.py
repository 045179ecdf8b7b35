"""Redfish (HTTPS) through sushy: a ComputerSystem's power and its one-time boot source override.

sushy is imported by `RedfishBmc`, in the worker thread of the first Redfish request. Basic authentication
on every request rather than a Redfish session: a session left behind by a request that timed out would take
one of the BMC's few session slots until it expires. A power change is asked for with a Reset action and
then waited for by reading the system's PowerState (BMCs carry the action out after they answer).
"""

from __future__ import annotations

import logging

from appliance.config import BmcConfig
from appliance.power.model import BmcFailed, scrub, wait_for_power

# sushy logs request bodies at DEBUG; bootd's --log-level debug must not make a BMC's answers (or anything a
# request carried) part of bootd's log
logging.getLogger("sushy").setLevel(logging.WARNING)


class RedfishBmc:
    def __init__(self, bmc: BmcConfig, password: str, timeout: float) -> None:
        import sushy
        from sushy import auth, exceptions

        self._sushy = sushy
        self._errors = exceptions
        self.timeout = timeout
        self._password = password
        base = f"{bmc.scheme}://{bmc.address}:{bmc.port}"
        self.where = f"redfish {base}"
        verify: bool | str = str(bmc.ca_file) if bmc.ca_file is not None else True
        try:
            root = sushy.Sushy(base, verify=verify, auth=auth.BasicAuth(username=bmc.username, password=password),
                               connect_timeout=timeout, read_timeout=timeout, server_side_retries=0)
            if bmc.system is not None:
                path = f"{root.get_system_collection().path.rstrip('/')}/{bmc.system}"
            else:
                members = sorted(root.get_system_collection().members_identities)
                if len(members) != 1:
                    raise BmcFailed(f"{self.where}: {len(members)} systems ({', '.join(members) or 'none'}): say "
                                    "which with bmc.system")
                path = members[0]
            self._system = root.get_system(path)
        except exceptions.SushyError as exc:
            raise BmcFailed(self._say("connect", exc)) from None

    def _say(self, what: str, exc: Exception) -> str:
        errors = self._errors
        if isinstance(exc, errors.AccessError):
            text = f"{self.where}: wrong username or password (HTTP {exc.status_code})"
        elif isinstance(exc, errors.ConnectionError):
            text = f"{self.where}: no answer to {what} (is the BMC reachable?)"
        elif isinstance(exc, errors.ResourceNotFoundError):
            text = f"{self.where}: {what}: not found (HTTP 404): check bmc.system"
        elif isinstance(exc, errors.HTTPError):
            text = f"{self.where}: {what} refused (HTTP {exc.status_code}: {exc.detail or exc.code})"
        else:
            text = f"{self.where}: {what} failed: {exc}"
        return scrub(text, self._password)

    def _call(self, what: str, function, *args, **kw):
        try:
            return function(*args, **kw)
        except self._errors.SushyError as exc:
            raise BmcFailed(self._say(what, exc)) from None

    def power_state(self) -> str:
        self._call("power status", self._system.refresh)
        state = self._system.power_state
        return {self._sushy.PowerState.ON: "on", self._sushy.PowerState.OFF: "off"}.get(state, str(state.value)
                                                                                            if state else "unknown")

    def _power(self, reset, want: str) -> None:
        self._call(f"power {want}", self._system.reset_system, reset)
        wait_for_power(self.power_state, want, where=self.where, timeout=self.timeout)

    def power_on(self) -> None:
        self._power(self._sushy.ResetType.ON, "on")

    def power_off(self) -> None:
        self._power(self._sushy.ResetType.FORCE_OFF, "off")

    def pxe_once(self) -> str:
        # the boot mode the system is set to (UEFI or Legacy) is kept: asking for the other would change how it boots
        mode = self._system.boot.mode
        self._call("boot override pxe", self._system.set_system_boot_options,
                   target=self._sushy.BootSource.PXE, enabled=self._sushy.BootSourceOverrideEnabled.ONCE, mode=mode)
        return f"boot override Pxe once{f' ({mode.value})' if mode is not None else ''}"

    def close(self) -> None:
        pass  # basic authentication: nothing is left open on the BMC
