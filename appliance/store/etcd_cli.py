"""`bootd store import DATADIR` and `bootd store export DIR`: a matchbox data dir into etcd and back.

- import: every file of profiles/, groups/, ignition/, generic/ and cloud/ is read and checked first (as bootd
  would load it: JSON profiles and groups, templates that parse, names the API could write, nothing leading
  outside its directory). One bad file and nothing is written; each bad file is named. Otherwise the files
  replace the store's data all at once (appliance/store/etcd_store.py import_files: staged under a new
  generation, made live in one transaction). assets/ stays on disk (each replica serves its own).
- export: the live data as of one revision, written file by file (atomically, 0644 as matchbox writes them)
  into DIR, which must be empty or absent. import then export gives the same bytes back.
Exit codes: 0 done, 1 bad files or a refused DIR, 2 config or etcd problems.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from appliance.atomic import write_atomically
from appliance.config import Config
from appliance.etcd import EtcdClient, EtcdError, EtcdTls
from appliance.store.etcd_store import Layout, export_files, import_files, read_data_dir
from appliance.store.writes import FILE_MODE


def _client(config: Config) -> EtcdClient:
    store = config.store
    tls = EtcdTls(store.tls.ca, store.tls.cert, store.tls.key) if store.tls is not None else None
    return EtcdClient(store.endpoints, tls=tls, timeout=store.timeout)


def cmd_store(config: Config, action: str, directory: Path) -> int:
    if config.store.backend.value != "etcd":
        print(f"bootd store {action}: {config.source}: store.backend is dir; import and export need "
              "`store: {backend: etcd, endpoints: [...]}`", file=sys.stderr)
        return 2
    if action == "import":
        return _import(config, directory)
    return _export(config, directory)


def _import(config: Config, root: Path) -> int:
    found = read_data_dir(root)
    for line in found.skipped:
        print(f"skipped {line}")
    if found.problems:
        for problem in found.problems:
            print(f"bootd store import: {root}/{problem}" if not problem.startswith(str(root)) else
                  f"bootd store import: {problem}", file=sys.stderr)
        print(f"bootd store import: nothing was written ({len(found.problems)} bad files)", file=sys.stderr)
        return 1
    layout = Layout(config.store.prefix)

    async def run():
        async with _client(config) as client:
            return await import_files(client, layout, found.files, progress=lambda line: print(line, flush=True))
    try:
        result = asyncio.run(run())
    except (EtcdError, OSError) as exc:
        print(f"bootd store import: {exc}; the store's data is unchanged", file=sys.stderr)
        return 2
    print(f"imported {result.files} files from {root} into {layout.data.decode()} (generation {result.generation}, "
          f"revision {result.revision})")
    return 0


def _export(config: Config, target: Path) -> int:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        print(f"bootd store export: {target} exists and is not an empty directory", file=sys.stderr)
        return 1
    layout = Layout(config.store.prefix)

    async def run():
        async with _client(config) as client:
            return await export_files(client, layout)
    try:
        files, revision = asyncio.run(run())
    except (EtcdError, OSError) as exc:
        print(f"bootd store export: {exc}", file=sys.stderr)
        return 2
    for path, data in sorted(files.items()):
        destination = target / path
        if ".." in Path(path).parts or Path(path).is_absolute():
            print(f"bootd store export: skipped key {path!r}: not a data-dir path", file=sys.stderr)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        write_atomically(destination, data, FILE_MODE)
    print(f"exported {len(files)} files from {layout.data.decode()} at revision {revision} to {target}")
    return 0


def etcd_data_problems(config: Config) -> tuple[list[str], list[str]]:
    """For `bootd check` with store.backend etcd: (errors, warnings) of the data in etcd, as for a data dir."""
    try:
        store = etcd_store_of(config)
    except (EtcdError, OSError) as exc:
        return [], [f"store: {exc}; the profiles, groups and templates in etcd were not checked"]
    where = f"etcd {config.store.prefix}/data/"
    return ([f"{where}: {p}" for p in store.template_errors()], [f"{where}: {p}" for p in store.check()])


def etcd_store_of(config: Config):
    """For one-shot commands (`bootd render`): the data in etcd read once, as an EtcdStore; EtcdError or
    OSError when it cannot be read."""
    from appliance.store.datadir import machine_groups
    from appliance.store.etcd_store import EtcdMirror, EtcdStore

    async def load() -> EtcdStore:
        async with _client(config) as client:
            mirror = EtcdMirror(client, Layout(config.store.prefix))
            await mirror.load()
            return EtcdStore(mirror, machine_groups(config))
    return asyncio.run(load())
