"""Files bootd reads at run time, shipped inside the package (read with importlib.resources, never from a
checkout): ipxe-SHA256SUMS, the iPXE binaries `bootd firmware fetch` installs; bootd.service, the unit."""
