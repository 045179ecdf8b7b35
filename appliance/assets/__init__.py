"""The OS images bootd serves: fetched from the distributions' mirrors, verified against their signing keys,
stored one directory per version with a pointer per channel, and kept current by the daemon.

sources.py (where releases are and what they hold; pure), download.py (HTTP with resume), verify.py (gpgv),
store.py (the directory layout, the pointer switch, prune decisions), fetch.py (the order of it all),
progress.py (what a terminal shows), track.py (the daemon's background checks)."""
