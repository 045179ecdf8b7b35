"""TFTP: protocol.py (packets, negotiation, one transfer; pure), files.py, server.py (UDP 69)."""
