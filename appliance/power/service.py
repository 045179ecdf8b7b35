"""`bootd.Power/Run` on the read-write API (mutual TLS, beside matchbox's services): the CLI says what to do
to which machines, the daemon asks their BMCs and answers with one outcome per machine.

Why the daemon and not the CLI talks to the BMCs: the passwords stay with bootd's config (the operator's
laptop needs a client certificate, not every BMC's password, nor a route to the BMC network), the requests
and their outcomes land in the progress bootd keeps, and the one door for it is the API that already admits
only holders of a client certificate. The read-only HTTP port has no power route at all.

The messages are JSON (appliance/power/model.py), not protobuf: this is bootd's own service, no matchbox
client speaks it, and nothing needs generating.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import grpc

from appliance.config import Machine
from appliance.events import PowerEvent
from appliance.power.model import PowerRequest, decode_outcomes, encode_outcomes
from appliance.power.runner import DEADLINE_SECONDS, run_request

logger = logging.getLogger(__name__)

SERVICE = "bootd.Power"
METHOD = f"/{SERVICE}/Run"
CLIENT_TIMEOUT = DEADLINE_SECONDS + 30  # the daemon answers every machine within its deadline


def power_handler(machines: Callable[[], Sequence[Machine]],
                  publish: Callable[[PowerEvent], None]) -> grpc.GenericRpcHandler:
    """The service for grpc.aio's server; `machines` reads the running config's (reloads count)."""
    from appliance.api.service import caller_of  # the same client-certificate check as matchbox's services

    async def run(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        caller = caller_of(context)
        if caller is None:
            logger.warning("api: power refused: the client certificate is not for clients (%s)", context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate (clientAuth) is required")
        try:
            request = PowerRequest.decode(body)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        who = f"{request.requested_by or 'someone'} (client {caller.name!r} at {caller.address})"
        logger.info("power %s of %s requested by %s", request.action.value,
                    "every machine with a bmc" if request.all else ", ".join(request.machines), who)
        outcomes = await run_request(request, machines(), publish, who)
        return encode_outcomes(outcomes)

    return grpc.method_handlers_generic_handler(SERVICE, {"Run": grpc.unary_unary_rpc_method_handler(run)})


def call(channel: grpc.Channel, request: PowerRequest):
    """The CLI's side: the outcomes, or grpc.RpcError."""
    send = channel.unary_unary(METHOD)
    return decode_outcomes(send(request.encode(), timeout=CLIENT_TIMEOUT))
