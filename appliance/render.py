"""What a machine gets from its profile: Ignition (raw, or a Butane template), generic and cloud configs.

Pure functions of the data dir's bytes and the template data (matchbox's collectVariables), shared by the
HTTP handlers and `bootd render`, so the command prints exactly what the routes serve. A failure is a
`Refusal` whose reason names the file, and for a template or Butane problem its line: the HTTP layer turns
it into a 404 and an event on the machine's progress.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from appliance.ignition import RAW_IGNITION_SUFFIXES, InvalidIgnition, check_ignition, check_raw_ignition
from appliance.ignition.butane import ButaneError, translate_butane
from appliance.store import DataDir, Profile
from appliance.templates.compiled import compile_template
from appliance.templates.gotemplate import TemplateError, go_data

@dataclass(frozen=True, slots=True)
class Rendered:
    body: bytes
    content_type: str
    charset: str | None  # None for JSON, as matchbox sends it
    detail: str  # for the event: which file, which spec


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str


def render_template(source: bytes, data: dict[str, Any], where: str) -> str | Refusal:
    try:
        text = source.decode()
    except UnicodeDecodeError as exc:
        return Refusal(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    try:
        return compile_template(text).render(go_data(data))
    except TemplateError as exc:
        return Refusal(f"{where}:{exc.line}: {exc.construct}: {exc.message}")


def ignition_for(profile: Profile, store: DataDir, data: dict[str, Any], source: bytes | None = None) \
        -> Rendered | Refusal:
    """`source`: the file's bytes when the caller has just read them (the HTTP side reads them to decide
    where to render): one read of the data dir per request, not two."""
    name = profile.ignition_id
    if not name:
        return Refusal("profile names no ignition_id")
    where = f"ignition/{name}"
    if source is None:
        source = store.ignition(name)
    if source is None:
        return Refusal(f"{where} is missing")
    if name.endswith(RAW_IGNITION_SUFFIXES):  # raw Ignition is never a template (matchbox's isIgnition)
        try:
            raw = check_raw_ignition(source)
        except InvalidIgnition as exc:
            return Refusal(f"{where} is invalid: {exc}")
        return Rendered(raw.body, "application/json", None, f"{where} (spec {raw.version}, served as {raw.served_version})")
    text = render_template(source, data, where)
    if isinstance(text, Refusal):
        return text
    return _translated(text, where)


# Butane -> Ignition translations, keyed by what they depend on: the rendered text (and the file's name, which
# the detail and the refusals name). Never stale: another text is another key. A fleet rendering one template
# gets the same text for machines whose data is the same, and translating was most of /ignition's time.
_TRANSLATIONS: OrderedDict[tuple[str, str], Rendered | Refusal] = OrderedDict()
_TRANSLATIONS_LOCK = threading.Lock()  # /ignition renders in worker threads
_TRANSLATIONS_KEPT = 256
_TRANSLATION_KEPT_CHARS = 256 * 1024  # a large inline file is not kept (a few of them would be megabytes)


def _translated(text: str, where: str) -> Rendered | Refusal:
    key = (where, text)
    with _TRANSLATIONS_LOCK:
        found = _TRANSLATIONS.get(key)
        if found is not None:
            _TRANSLATIONS.move_to_end(key)
            return found
    result = _translate(text, where)
    if len(text) <= _TRANSLATION_KEPT_CHARS:
        with _TRANSLATIONS_LOCK:
            _TRANSLATIONS[key] = result
            if len(_TRANSLATIONS) > _TRANSLATIONS_KEPT:
                _TRANSLATIONS.popitem(last=False)
    return result


def _translate(text: str, where: str) -> Rendered | Refusal:
    try:
        translated = translate_butane(text)
    except ButaneError as exc:
        return Refusal(f"{where}: Butane (as rendered) {exc}")
    try:
        raw = check_ignition(translated.config)
    except InvalidIgnition as exc:  # a translation that is not valid Ignition: say so, serve nothing
        return Refusal(f"{where}: the translated Ignition is invalid: {exc}")
    warned = f", {len(translated.warnings)} warnings: {'; '.join(translated.warnings)[:300]}" \
        if translated.warnings else ""
    return Rendered(raw.body, "application/json", None,
                    f"{where} (Butane {translated.variant} {translated.version} -> spec {raw.served_version}{warned})")


def generic_for(profile: Profile, store: DataDir, data: dict[str, Any], *, cloud: bool = False) \
        -> Rendered | Refusal:
    name = profile.cloud_id if cloud else profile.generic_id
    if not name:
        return Refusal(f"profile names no {'cloud_id' if cloud else 'generic_id'}")
    where = f"{'cloud' if cloud else 'generic'}/{name}"
    source = store.cloud(name) if cloud else store.generic(name)
    if source is None:
        return Refusal(f"{where} is missing")
    text = render_template(source, data, where)
    if isinstance(text, Refusal):
        return text
    if cloud and not text.startswith(("#cloud-config", "#!")):
        return Refusal(f"{where}: rendered text is neither a #cloud-config document nor a script")
    return Rendered(text.encode(), sniff_text_type(text), "utf-8", where)


_HTML_TAGS = ("<!doctype html", "<html", "<head", "<script", "<iframe", "<h1", "<div", "<font", "<table", "<a",
              "<style", "<title", "<b", "<body", "<br", "<p", "<!--")


def sniff_text_type(text: str) -> str:
    """Go's http.DetectContentType for the text that templates produce (matchbox serves with ServeContent)."""
    head = text[:512].lstrip("\t\n\x0c\r ").lower()
    for tag in _HTML_TAGS:  # a tag counts when a space or `>` follows it
        if head.startswith(tag) and head[len(tag) : len(tag) + 1] in (" ", ">"):
            return "text/html"
    if head.startswith("<?xml"):
        return "text/xml"
    return "text/plain"
