"""Butane -> Ignition, for the variants matchbox users serve (`flatcar` 1.0-1.1, `fcos` 1.0-1.6).

Butane is Ignition written in YAML with snake_case keys plus some sugar. This module translates the part
that maps one to one (ignition, passwd, storage disks/raid/filesystems/files/directories/links/luks,
systemd units and drop-ins, kernel_arguments) and the sugar that needs no files: `inline` contents become
data URLs exactly as Butane encodes them (URL-escaped, base64, or gzip+base64, whichever is shortest, with
`compression` set explicitly). Anything that needs Butane's `--files-dir` (`local`, `trees`,
`contents_local`, `ssh_authorized_keys_local`) is an error, as it is when matchbox translates (it passes no
files dir); sugar that generates units or partitions (`with_mount_unit`, `boot_device`, `grub`) is refused
by name, since bootd does not generate it.

Errors carry the line of the YAML node and the field's path. Unknown keys are warnings (Butane's non-strict
default, which matchbox uses) and are dropped. Each field exists from an Ignition spec version on; a field
the chosen Butane version's spec lacks is an error naming the version it needs.
"""

from __future__ import annotations

import base64
import gzip
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

# (variant, version) -> the Ignition spec it produces
VERSIONS: dict[tuple[str, str], str] = {
    ("fcos", "1.0.0"): "3.0.0", ("fcos", "1.1.0"): "3.1.0", ("fcos", "1.2.0"): "3.2.0", ("fcos", "1.3.0"): "3.2.0",
    ("fcos", "1.4.0"): "3.3.0", ("fcos", "1.5.0"): "3.4.0", ("fcos", "1.6.0"): "3.5.0",
    ("flatcar", "1.0.0"): "3.3.0", ("flatcar", "1.1.0"): "3.4.0",
}


class ButaneError(ValueError):
    def __init__(self, line: int, where: str, message: str) -> None:
        super().__init__(f"line {line}: {where}: {message}" if where else f"line {line}: {message}")
        self.line, self.where, self.message = line, where, message


@dataclass(frozen=True, slots=True)
class Translated:
    variant: str
    version: str
    spec: str  # the Ignition spec version produced
    config: dict[str, Any]
    warnings: tuple[str, ...]


# --- the schema: Butane key -> what it holds, and the Ignition spec that introduced it -------------------

@dataclass(frozen=True, slots=True)
class Obj:
    fields: dict[str, Field]


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Kind


@dataclass(frozen=True, slots=True)
class Refused:
    why: str


Kind = Union[str, Obj, ListOf, Refused]  # str: "str" | "int" | "bool" | "strs"


@dataclass(frozen=True, slots=True)
class Field:
    kind: Kind
    since: str = "3.0.0"
    sugar: bool = False  # Butane-only: translated, not copied


def _obj(**fields: Kind | Field) -> Obj:
    return Obj({k: v if isinstance(v, Field) else Field(v) for k, v in fields.items()})


_NEEDS_FILES_DIR = Refused("needs Butane's --files-dir, which matchbox and bootd do not have: inline the "
                           "contents instead")
_VERIFICATION = _obj(hash="str")
_HEADERS = Field(ListOf(_obj(name="str", value="str")), "3.1.0")


def _resource(compression_since: str = "3.0.0") -> Obj:
    return _obj(source="str", inline=Field("str", sugar=True), local=_NEEDS_FILES_DIR,
                compression=Field("str", compression_since), http_headers=_HEADERS, verification=_VERIFICATION)


_OWNER = _obj(id="int", name="str")
_FILE = _obj(path="str", overwrite="bool", contents=_resource(), append=ListOf(_resource()), mode="int",
             user=_OWNER, group=_OWNER)
_DIRECTORY = _obj(path="str", overwrite="bool", mode="int", user=_OWNER, group=_OWNER)
_LINK = _obj(path="str", overwrite="bool", user=_OWNER, group=_OWNER, target="str", hard="bool")
_PARTITION = _obj(label="str", number="int", size_mib="int", start_mib="int", type_guid="str", guid="str",
                  wipe_partition_entry="bool", should_exist="bool", resize=Field("bool", "3.2.0"))
_DISK = _obj(device="str", wipe_table="bool", partitions=ListOf(_PARTITION))
_RAID = _obj(name="str", level="str", devices="strs", spares="int", options="strs")
_FILESYSTEM = _obj(device="str", format="str", path="str", wipe_filesystem="bool", label="str", uuid="str",
                   options="strs", mount_options=Field("strs", "3.1.0"),
                   with_mount_unit=Refused("generates a mount unit, which bootd does not do: write the unit "
                                           "under systemd.units"))
_TANG = _obj(url="str", thumbprint="str", advertisement=Field("str", "3.4.0"))
_CLEVIS = _obj(tang=ListOf(_TANG), tpm2="bool", threshold="int",
               custom=Field(_obj(pin="str", config="str", needs_network="bool"), "3.3.0"))
_LUKS = _obj(name="str", device="str", key_file=_resource(), label="str", uuid="str", options="strs",
             discard=Field("bool", "3.4.0"), open_options=Field("strs", "3.4.0"), wipe_volume="bool", clevis=_CLEVIS)
_UNIT = _obj(name="str", enabled="bool", mask="bool", contents="str", contents_local=_NEEDS_FILES_DIR,
             dropins=ListOf(_obj(name="str", contents="str", contents_local=_NEEDS_FILES_DIR)))
_USER = _obj(name="str", password_hash="str", ssh_authorized_keys="strs", ssh_authorized_keys_local=_NEEDS_FILES_DIR,
             uid="int", gecos="str", home_dir="str", no_create_home="bool", primary_group="str", groups="strs",
             no_user_group="bool", no_log_init="bool", shell="str", should_exist=Field("bool", "3.2.0"),
             system="bool")
_GROUP = _obj(name="str", gid="int", password_hash="str", should_exist=Field("bool", "3.2.0"), system="bool")
ROOT = _obj(
    ignition=_obj(
        config=_obj(merge=ListOf(_resource("3.1.0")), replace=_resource("3.1.0")),
        timeouts=_obj(http_response_headers="int", http_total="int"),
        security=_obj(tls=_obj(certificate_authorities=ListOf(_resource("3.1.0")))),
        proxy=Field(_obj(http_proxy="str", https_proxy="str", no_proxy="strs"), "3.1.0"),
    ),
    storage=_obj(disks=ListOf(_DISK), raid=ListOf(_RAID), filesystems=ListOf(_FILESYSTEM), files=ListOf(_FILE),
                 directories=ListOf(_DIRECTORY), links=ListOf(_LINK), luks=Field(ListOf(_LUKS), "3.2.0"),
                 trees=_NEEDS_FILES_DIR),
    systemd=_obj(units=ListOf(_UNIT)),
    passwd=_obj(users=ListOf(_USER), groups=ListOf(_GROUP)),
    kernel_arguments=Field(_obj(should_exist="strs", should_not_exist="strs"), "3.3.0"),
    boot_device=Refused("generates partitions, RAID and LUKS for the boot disk, which bootd does not do"),
    grub=Refused("generates GRUB password files, which bootd does not do"),
)
_SPECIAL_NAMES = {"size_mib": "sizeMiB", "start_mib": "startMiB"}
_UNIT_SUFFIX = re.compile(r".+\.(service|socket|device|mount|automount|swap|target|path|timer|snapshot|slice|scope)$")


def ignition_key(key: str) -> str:
    if key in _SPECIAL_NAMES:
        return _SPECIAL_NAMES[key]
    first, *rest = key.split("_")
    return first + "".join(word.capitalize() for word in rest)


def _spec_tuple(spec: str) -> tuple[int, ...]:
    return tuple(int(p) for p in spec.split("."))


# --- translation ---------------------------------------------------------------------------------------------

def translate_butane(text: str) -> Translated:
    """Butane YAML (already rendered) -> Ignition config; ButaneError on the first problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ButaneError(mark.line + 1 if mark else 1, "", f"invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(root, yaml.MappingNode):
        raise ButaneError(root.start_mark.line + 1 if root else 1, "", "expected a mapping with variant and version")
    pairs = {key.value: (key, value) for key, value in root.value}
    for required in ("variant", "version"):
        if required not in pairs:
            raise ButaneError(1, required, "required (a Butane config starts with variant and version)")
    variant = _scalar_text(pairs["variant"][1], "variant")
    version = _scalar_text(pairs["version"][1], "version")
    spec = VERSIONS.get((variant, version))
    if spec is None:
        known = ", ".join(f"{v} {n}" for v, n in VERSIONS)
        raise ButaneError(pairs["version"][1].start_mark.line + 1, "version",
                          f"unsupported variant/version {variant} {version} (supported: {known})")
    walker = _Walker(spec, f"{variant} {version}")
    config = walker.object(root, ROOT, "", skip=frozenset(("variant", "version")))
    ignition = config.setdefault("ignition", {})
    ignition["version"] = spec
    config = {"ignition": config.pop("ignition"), **config}
    _validate(config, walker.lines)
    return Translated(variant, version, spec, config, tuple(walker.warnings))


def _scalar_text(node: yaml.Node, where: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise ButaneError(node.start_mark.line + 1, where, "expected a string")
    return node.value


_LOADER = yaml.SafeLoader("")


@dataclass(slots=True)
class _Walker:
    spec: str
    name: str
    warnings: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)  # output path -> YAML line, for validation errors

    def fail(self, node: yaml.Node, where: str, message: str) -> ButaneError:
        return ButaneError(node.start_mark.line + 1, where, message)

    def object(self, node: yaml.Node, schema: Obj, where: str, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, where or "(top)", "expected a mapping")
        out: dict[str, Any] = {}
        seen: dict[str, int] = {}
        inline_sugar = None
        for key_node, value_node in node.value:
            key = key_node.value
            if key in skip:
                continue
            path = f"{where}.{key}" if where else key
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ButaneError(line, path, f"duplicate key (first on line {seen[key]})")
            seen[key] = line
            spec_field = schema.fields.get(key)
            if spec_field is None:
                self.warnings.append(f"line {line}: {path}: unknown key, ignored")
                continue
            if isinstance(spec_field.kind, Refused):
                if _is_null(value_node):
                    continue
                raise ButaneError(line, path, f"not supported: {spec_field.kind.why}")
            if _spec_tuple(spec_field.since) > _spec_tuple(self.spec):
                raise ButaneError(line, path, f"not in {self.name} (Ignition spec {self.spec}); it needs spec "
                                              f"{spec_field.since} or later")
            value = self.value(value_node, spec_field.kind, path)
            if value is None:
                continue
            if spec_field.sugar:
                inline_sugar = (value, line)
                continue
            out_key = ignition_key(key)
            out[out_key] = value
            self.lines[f"{where}.{out_key}" if where else out_key] = line
        if inline_sugar is not None:
            self._inline(out, inline_sugar, where)
        return out

    def _inline(self, resource: dict[str, Any], inline: tuple[str, int], where: str) -> None:
        text, line = inline
        if "source" in resource:
            raise ButaneError(line, where, "only one of the following can be set: inline, local, source")
        given = resource.get("compression") or None
        # a file's contents and appends have `compression` from spec 3.0 on; configs, CAs and key files from 3.1
        compressible = where.startswith("storage.files") or _spec_tuple(self.spec) >= (3, 1)
        source, compression = make_data_url(text.encode(), given, allow_compression=compressible)
        resource["source"] = source
        if compression is not None and compressible:
            resource["compression"] = compression

    def value(self, node: yaml.Node, kind: Kind, where: str) -> Any:
        if _is_null(node):
            return None
        if isinstance(kind, Obj):
            return self.object(node, kind, where)
        if isinstance(kind, ListOf):
            if not isinstance(node, yaml.SequenceNode):
                raise self.fail(node, where, "expected a list")
            items = []
            for i, item in enumerate(node.value):
                self.lines[f"{where}[{i}]"] = item.start_mark.line + 1
                items.append(self.value(item, kind.item, f"{where}[{i}]"))
            return items
        if kind == "strs":
            if not isinstance(node, yaml.SequenceNode):
                raise self.fail(node, where, "expected a list of strings")
            return [self.value(item, "str", f"{where}[{i}]") for i, item in enumerate(node.value)]
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, where, f"expected {'a string' if kind == 'str' else 'an integer' if kind == 'int' else 'true or false'}")
        if kind == "str":
            return node.value  # go-yaml fills a string field with any scalar's text
        resolved = node.tag.rsplit(":", 1)[-1]
        if kind == "int":
            if resolved == "int":
                return _LOADER.construct_object(node)
            if resolved == "str" and re.fullmatch(r"0o[0-7]+", node.value) and node.style is None:
                return int(node.value[2:], 8)  # YAML 1.2 octal, which go-yaml reads and PyYAML does not
            raise self.fail(node, where, f"expected an integer, got {node.value!r}")
        if resolved == "bool" and node.value.lower() in ("true", "false"):
            return node.value.lower() == "true"
        raise self.fail(node, where, f"expected true or false, got {node.value!r}")


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")


def make_data_url(contents: bytes, compression: str | None, *, allow_compression: bool) -> tuple[str, str | None]:
    """Butane's MakeDataURL: the shortest of URL-escaped, base64, and (when the config did not compress the
    contents itself) gzip+base64. Returns the URL and the `compression` to write: "" or "gzip" when Butane
    chose, None when the config already said."""
    chosen: str | None = "" if not compression else None
    opaque = "," + urllib.parse.quote(contents, safe="$&+,/:;=?@")
    b64 = ";base64," + base64.b64encode(contents).decode()
    if len(b64) < len(opaque):
        opaque = b64
    if not compression and allow_compression:
        gz = ";base64," + base64.b64encode(gzip.compress(contents, compresslevel=9, mtime=0)).decode()
        if len(gz) + len("gzip") < len(opaque):
            opaque, chosen = gz, "gzip"
    return "data:" + opaque, chosen


# --- what Butane validates after translation ---------------------------------------------------------------

_HASH = re.compile(r"(sha256-[0-9a-f]{64}|sha512-[0-9a-f]{128})")


def _validate(config: dict[str, Any], lines: dict[str, int]) -> None:
    def fail(path: str, message: str) -> ButaneError:
        return ButaneError(lines.get(path, 1), path, message)

    storage = config.get("storage", {})
    paths: dict[str, str] = {}
    for section in ("files", "directories", "links"):
        for i, node in enumerate(storage.get(section, [])):
            where = f"storage.{section}[{i}]"
            path = node.get("path")
            if not path:
                raise fail(f"{where}", "path is required")
            if not path.startswith("/"):
                raise fail(f"{where}.path", f"path {path!r} is not absolute")
            if path in paths:
                raise fail(f"{where}.path", f"duplicate path {path!r} (also {paths[path]})")
            paths[path] = where
            mode = node.get("mode")
            if mode is not None and not 0 <= mode <= 0o7777:
                raise fail(f"{where}.mode", f"illegal file mode {oct(mode)}")
            if section == "links" and not node.get("target"):
                raise fail(f"{where}", "target is required")
            for key, resource in (("contents", node.get("contents")), *(
                    (f"append[{j}]", r) for j, r in enumerate(node.get("append", [])))):
                if resource:
                    _check_resource(resource, f"{where}.{key}", fail)
            if node.get("overwrite") and section == "files" and not (node.get("contents") or {}).get("source"):
                raise fail(f"{where}.overwrite", "overwrite is true but there are no contents")
    for i, unit in enumerate(config.get("systemd", {}).get("units", [])):
        where = f"systemd.units[{i}]"
        name = unit.get("name", "")
        if not _UNIT_SUFFIX.fullmatch(name):
            raise fail(f"{where}.name" if name else where, f"invalid unit name {name!r}: needs a unit type suffix")
        for j, dropin in enumerate(unit.get("dropins", [])):
            if not dropin.get("name", "").endswith(".conf"):
                raise fail(f"{where}.dropins[{j}].name", "a drop-in's name must end with .conf")
    names: set[str] = set()
    for i, user in enumerate(config.get("passwd", {}).get("users", [])):
        if not user.get("name"):
            raise fail(f"passwd.users[{i}]", "name is required")
        if user["name"] in names:
            raise fail(f"passwd.users[{i}].name", f"duplicate user {user['name']!r}")
        names.add(user["name"])
    for i, unit_fs in enumerate(storage.get("filesystems", [])):
        if not unit_fs.get("device"):
            raise fail(f"storage.filesystems[{i}]", "device is required")


def _check_resource(resource: dict[str, Any], where: str, fail) -> None:
    compression = resource.get("compression")
    if compression not in (None, "", "gzip"):
        raise fail(f"{where}.compression", f"unknown compression {compression!r} (null or gzip)")
    hash_value = (resource.get("verification") or {}).get("hash")
    if hash_value is not None and not _HASH.fullmatch(hash_value):
        raise fail(f"{where}.verification.hash", "the hash must be sha256-<64 hex> or sha512-<128 hex>")
    source = resource.get("source")
    if source is not None and urllib.parse.urlsplit(source).scheme not in (
            "http", "https", "tftp", "s3", "arn", "gs", "data"):
        raise fail(f"{where}.source", f"unsupported URL scheme in {source[:60]!r}")
