"""IPMI 2.0 (RMCP+, UDP 623) through python-ipmi: chassis power and a one-time boot device.

python-ipmi is imported by `IpmiBmc`, in the worker thread of the first IPMI request. Each request opens its
own session on its own socket and closes it (python-ipmi keeps no state between connections; pyghmi's
process-wide session cache handed a later request a half-closed session). Power changes are asked for and
then waited for by reading the chassis status, so "off" means the BMC reported it off. A cycle is an off
and an on, not IPMI's `chassis power cycle`: that is refused while the chassis is off, and some BMCs
(virtualbmc) do not implement it.
"""

from __future__ import annotations

import logging

from appliance.config import BmcConfig
from appliance.power.model import BmcFailed, scrub, wait_for_power

# python-ipmi logs its session at DEBUG, the password with it: bootd's --log-level debug must never carry it
logging.getLogger("pyipmi").setLevel(logging.WARNING)

ANSWER_SECONDS = 3.0  # for each IPMI message; python-ipmi resends it RESENDS times
RESENDS = 2


class IpmiBmc:
    def __init__(self, bmc: BmcConfig, password: str, timeout: float) -> None:
        import pyipmi
        import pyipmi.interfaces
        from pyipmi import chassis, errors

        self._chassis = chassis
        self._errors = (errors.IpmiConnectionError, errors.IpmiTimeoutError, errors.AuthenticationError,
                        errors.CompletionCodeError, errors.MessageStatusCodeError, errors.NotSupportedError,
                        errors.DecodingError, errors.RetryError, errors.IpmiLongPasswordError, OSError)
        self._auth_errors = (errors.AuthenticationError,)
        self._unreachable = (errors.IpmiConnectionError,)
        self._silent_errors = (errors.IpmiTimeoutError, errors.RetryError)
        self.where = f"ipmi {bmc.address}:{bmc.port}"
        self.timeout = timeout
        self._password = password
        interface = pyipmi.interfaces.create_interface("rmcpplus", keep_alive_interval=0, max_retries=RESENDS)
        self._ipmi = pyipmi.create_connection(interface)
        self._ipmi.session.set_session_type_rmcp(bmc.address, port=bmc.port)
        self._ipmi.session.set_auth_type_user(bmc.username, password)
        self._ipmi.target = pyipmi.Target(ipmb_address=0x20)
        self._call("login", self._open)

    def _open(self) -> None:
        self._ipmi.interface.open()
        self._ipmi.interface.set_timeout(ANSWER_SECONDS)
        self._ipmi.session.establish()

    def _say(self, what: str, exc: BaseException) -> str:
        if isinstance(exc, self._auth_errors):
            return scrub(f"{self.where}: wrong username or password (the BMC said: {exc})", self._password)
        if isinstance(exc, self._unreachable):
            return scrub(f"{self.where}: unreachable: {exc}", self._password)
        if isinstance(exc, self._silent_errors):
            return scrub(f"{self.where}: no answer to {what} ({exc})", self._password)
        if isinstance(exc, OSError):
            return f"{self.where}: {what}: {exc.strerror or exc}"
        return scrub(f"{self.where}: {what} failed: {exc}", self._password)

    def _call(self, what: str, function, *args):
        try:
            return function(*args)
        except self._errors as exc:
            raise BmcFailed(self._say(what, exc)) from None

    def power_state(self) -> str:
        return "on" if self._call("power status", self._ipmi.get_chassis_status).power_on else "off"

    def _power(self, control, want: str) -> None:
        self._call(f"power {want}", control)
        wait_for_power(self.power_state, want, where=self.where, timeout=self.timeout)

    def power_on(self) -> None:
        self._power(self._ipmi.chassis_control_power_up, "on")

    def power_off(self) -> None:
        self._power(self._ipmi.chassis_control_power_down, "off")

    def pxe_once(self) -> str:
        # the boot mode the BMC holds (legacy or efi) is kept: asking for the other would change how it boots
        try:
            mode = self._ipmi.get_boot_mode()
        except self._errors:
            mode = "legacy"  # IPMI's default when the flags were never set
        # persistent False: the override holds for the next boot only, then the disk comes first again
        self._call("boot device pxe", self._ipmi.set_boot_options, self._chassis.BootDevice.PXE, mode, False)
        return f"boot device pxe, next boot only ({mode})"

    def close(self) -> None:
        try:
            self._ipmi.close()
        except self._errors:
            pass  # the session expires on the BMC's side after its own timeout
