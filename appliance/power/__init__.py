"""Power: a machine's BMC asked over IPMI or Redfish for its power state, power on/off/cycle, or a one-time
PXE boot (`bootd power`, `bootd reprovision`), so machines boot from disk and are reprovisioned on request.

Invariants:
- The BMC libraries (python-ipmi for IPMI, sushy for Redfish) are imported only when a request reaches a machine
  that has a `bmc:` of that protocol: bootd's start never pays for them.
- They block, so each machine's request runs in a worker thread of its own with a deadline: a dead BMC
  fails its own machine at its deadline, never another's (`--all` asks every BMC at once).
- A password is read from its file or the environment for each request, handed to the library and never
  kept: no Config, event, log line, error or API answer holds it (errors are the library's words with the
  password cut out, should a library ever echo it).
- The daemon does the BMC work behind the read-write API (mutual TLS): the read-only HTTP port has no power
  route, and whoever asks is named in the machine's progress.
"""

from appliance.power.model import PowerAction, PowerOutcome, PowerRequest
from appliance.power.runner import run_request

__all__ = ["PowerAction", "PowerOutcome", "PowerRequest", "run_request"]
