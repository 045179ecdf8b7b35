"""DNS: zone.py (the zone from the config, answers; pure), server.py (UDP and TCP 53)."""
