"""The fleet view: every replica's machine progress, through etcd (records.py: what is written; state.py: the
decisions; sync.py: the I/O)."""
