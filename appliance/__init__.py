"""bootd: proxy-DHCP, TFTP, DNS and matchbox-compatible HTTP boot in one asyncio daemon."""

__version__ = "0.1.0"
