"""The read-write API: matchbox's gRPC protocol over mutual TLS, its certificates, and a client."""
