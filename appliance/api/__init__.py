"""The read-write API: matchbox's gRPC protocol over mutual TLS, its certificates, and a client."""

import os

# gRPC's core logs every failed TLS handshake (a port scan, any garbage at the API port) at INFO straight to
# stderr, past Python's logging: one unformatted line per connection. Only its errors are wanted. Read when
# grpc is first imported, which is below this package (service.py, client.py).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
