"""matchbox's user templates, parsed once per distinct text and checked for `bootd check`. A room of its own so
the data dir (which checks templates) and render.py (which renders them) both use it without importing each
other."""

from __future__ import annotations

from functools import lru_cache

from appliance.templates.gotemplate import GoTemplate, TemplateError, parse_template


@lru_cache(maxsize=256)
def compile_template(source: str) -> GoTemplate:
    """Parsed once per distinct text: the data dir re-reads a file only when it changes."""
    return parse_template(source)


def check_template(source: bytes, where: str) -> str | None:
    """For `bootd check`: the parse error of a template file, or None."""
    try:
        compile_template(source.decode())
    except UnicodeDecodeError as exc:
        return f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})"
    except TemplateError as exc:
        return f"{where}:{exc.line}: {exc.construct}: {exc.message}"
    return None
