"""etcd for bootd: an asyncio client for the v3 API (client.py) over generated messages (pb/, from proto/)."""

from appliance.etcd.client import (Compare, CompareOp, Delete, EtcdClient, EtcdCompacted, EtcdError, EtcdTls,
                                   EtcdUnavailable, EventType, Get, KeyValue, Lease, Put, RangeResult, TxnResult,
                                   WatchBatch, WatchEvent, prefix_end)

__all__ = ["Compare", "CompareOp", "Delete", "EtcdClient", "EtcdCompacted", "EtcdError", "EtcdTls",
           "EtcdUnavailable", "EventType", "Get", "KeyValue", "Lease", "Put", "RangeResult", "TxnResult",
           "WatchBatch", "WatchEvent", "prefix_end"]
