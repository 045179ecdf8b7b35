"""bootd's Go template engine against Go's text/template: every case in tests/reference/gotemplate_cases.json
is Go's own answer (output, or error line and message), and bootd must give the same."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from appliance.templates.gotemplate import TemplateError, TemplateExecError, TemplateSyntaxError, go_data, parse_template
from tests.reference.gotemplate_cases import CASES, META, run_go

RECORDED = json.loads((Path(__file__).parents[1] / "reference/gotemplate_cases.json").read_text())
_GO_ERROR = re.compile(r"template: t:(\d+)(?::\d+)?: (?:executing \"t\" at <[^>]*>: )?(.*)", re.S)


def render(template: str, data=META) -> str:
    return parse_template(template).render(go_data(data))


@pytest.mark.parametrize("name", list(RECORDED["cases"]))
def test_same_answer_as_go(name):
    case = RECORDED["cases"][name]
    if "output" in case:
        assert render(case["template"]) == case["output"]
        return
    line, message = _GO_ERROR.fullmatch(case["error"]).groups()
    executing = "executing" in case["error"]
    with pytest.raises(TemplateExecError if executing else TemplateSyntaxError) as raised:
        render(case["template"])
    assert (raised.value.line, raised.value.message) == (int(line), message)


def test_the_recording_is_what_go_says_today():
    if shutil.which("go") is None:
        pytest.skip("go is not installed (tests/setup.sh installs golang-go)")
    assert RECORDED["data"] == META and set(RECORDED["cases"]) == set(CASES)
    answers = run_go(CASES, META)
    for name, case in RECORDED["cases"].items():
        assert {k: v for k, v in case.items() if k != "template"} == answers[name], name


@pytest.mark.parametrize("template, construct", [
    ('{{define "x"}}a{{end}}', "define"),
    ('{{template "x" .}}', "template"),
    ('{{block "x" .}}a{{end}}', "block"),
    ("{{slice .list 1}}", "slice"),
    ("{{html .uuid}}", "html"),
])
def test_outside_the_subset_is_named_with_its_line(template, construct):
    with pytest.raises(TemplateSyntaxError) as raised:
        parse_template("first line\n" + template)
    assert raised.value.line == 2 and construct in str(raised.value) and "subset" in str(raised.value)


def test_error_names_the_construct():
    with pytest.raises(TemplateError) as raised:
        render("a\nb {{ .request.query.foo }}\n{{ .nope }}")
    assert str(raised.value) == 'line 3: {{ .nope }}: map has no entry for key "nope"'


def test_json_numbers_are_float64():
    assert go_data({"a": [1, {"b": 2}], "c": True}) == {"a": [1.0, {"b": 2.0}], "c": True}
    assert render("{{.n}} {{printf \"%d\" 3}}", {"n": 3}) == "3 3"
