"""Templates and data whose output (or error) Go's text/template decides: `gotemplate_cases.json` holds Go's
answers, recorded with `python -m tests.reference.gotemplate_cases` (needs `go`), and
tests/unit/test_gotemplate.py checks bootd's engine against them (and, where `go` is installed, that the
recording is still what Go says)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
META = {"pod_network": "10.2.0.0/16", "service_name": "etcd2", "uuid": "a1b2c3d4", "count": 3, "ratio": 2.5,
        "big": 1000000, "tiny": 0.00001, "neg": -7, "yes": True, "no": False, "nothing": None, "empty": "",
        "list": ["a", "b", "c"], "nums": [1, 2.5, 1e6], "none": [], "nested": {"a": {"b": "deep"}, "z": 1},
        "map": {"k2": "v2", "k1": "v1", "k3": None}, "request": {"query": {"mac": "52:54:00:a1:9c:ae", "foo": "bar"},
                                                               "raw_query": "mac=52-54-00-a1-9c-ae&foo=bar"},
        "hosts": [{"name": "n1", "ip": "10.0.0.1"}, {"name": "n2", "ip": "10.0.0.2"}], "text": "héllo"}

CASES: dict[str, str] = {
    # text, fields, printing
    "text": "plain text\nwith lines\n",
    "field": "{{.service_name}}",
    "nested": "{{.nested.a.b}}",
    "dot": "{{with .nested.a}}{{.}}{{end}}",
    "root-var": "{{with .nested}}{{$.uuid}}{{end}}",
    "int-float": "{{.count}} {{.ratio}} {{.big}} {{.tiny}} {{.neg}}",
    "bools": "{{.yes}} {{.no}}",
    "null": "[{{.nothing}}]",
    "list-print": "{{.list}} {{.nums}} {{.none}}",
    "map-print": "{{.map}} {{.nested}}",
    "request": "{{.request.query.foo}} {{.request.raw_query}}",
    "literals": "{{1}} {{1.5}} {{1e6}} {{0x1F}} {{-3}} {{\"s\\tq\"}} {{`raw\\n`}} {{true}} {{'a'}}",
    "unicode": "{{.text}} {{len .text}}",
    # trim markers and comments
    "trim-left": "a   \n\t{{- .uuid}}",
    "trim-right": "{{.uuid -}}  \n  b",
    "trim-both": "x\n  {{- .uuid -}}  \ny",
    "comment": "a{{/* a comment */}}b",
    "comment-trim": "a  {{- /* gone */ -}}  b",
    "comment-multiline": "a{{/* one\ntwo */}}b",
    "minus-number": "{{-3}}",
    # if / else if / else
    "if-true": "{{if .yes}}yes{{end}}",
    "if-false-else": "{{if .no}}yes{{else}}no{{end}}",
    "else-if": "{{if .no}}1{{else if .empty}}2{{else if .list}}3{{else}}4{{end}}",
    "if-empty-things": "{{if .none}}a{{end}}{{if .empty}}b{{end}}{{if .nothing}}c{{end}}{{if 0}}d{{end}}{{if 0.0}}e{{end}}",
    "if-map": "{{if .map}}map{{end}}",
    "if-declare": "{{if $x := .uuid}}{{$x}}{{else}}none{{end}}",
    # range
    "range-list": "{{range .list}}<{{.}}>{{end}}",
    "range-index": "{{range $i, $x := .list}}{{$i}}={{$x}};{{end}}",
    "range-one-var": "{{range $x := .list}}{{$x}}{{end}}",
    "range-map": "{{range $k, $v := .map}}{{$k}}:{{$v}} {{end}}",
    "range-map-dot": "{{range .map}}[{{.}}]{{end}}",
    "range-else": "{{range .none}}x{{else}}empty{{end}}",
    "range-nil": "{{range .nothing}}x{{else}}nil{{end}}",
    "range-objects": "{{range .hosts}}{{.name}} {{.ip}}\n{{end}}",
    "range-break": "{{range .list}}{{if eq . \"b\"}}{{break}}{{end}}{{.}}{{end}}",
    "range-continue": "{{range .list}}{{if eq . \"b\"}}{{continue}}{{end}}{{.}}{{end}}",
    "range-dollar": "{{range .hosts}}{{$.uuid}}-{{.name}} {{end}}",
    "range-nested": "{{range $h := .hosts}}{{range $.list}}{{$h.name}}{{.}} {{end}}{{end}}",
    "range-string": "{{range .uuid}}x{{end}}",
    "range-number": "{{range .ratio}}x{{end}}",
    # with
    "with": "{{with .nested.a}}{{.b}}{{end}}",
    "with-else": "{{with .empty}}x{{else}}none{{end}}",
    "with-var": "{{with $n := .nested}}{{$n.z}}{{end}}",
    # variables
    "declare-assign": "{{$x := 1}}{{$x}}{{$x = 2}}{{$x}}",
    "assign-in-range": "{{$last := \"\"}}{{range .list}}{{$last = .}}{{end}}{{$last}}",
    "scope": "{{$x := \"outer\"}}{{if .yes}}{{$x := \"inner\"}}{{$x}}{{end}} {{$x}}",
    # pipelines and parentheses
    "pipe-printf": "{{.uuid | printf \"%s-x\"}}",
    "pipe-len": "{{.list | len}}",
    "paren": "{{printf \"%d\" (len .list)}}",
    "paren-field": "{{(.nested.a).b}}",
    "pipe-chain": "{{.count | printf \"%v\" | len}}",
    # functions
    "and-or": "{{and .yes .uuid}} {{and .no .uuid}} {{or .empty .uuid}} {{or .empty .none}} {{and 1 2 3}}",
    "not": "{{not .yes}} {{not .empty}} {{not .list}}",
    "len": "{{len .list}} {{len .map}} {{len .uuid}} {{len .none}}",
    "index": "{{index .list 1}} {{index .map \"k1\"}} {{index .nested \"a\" \"b\"}} {{index .hosts 0 | printf \"%v\"}}",
    "index-missing-key": "[{{index .map \"nope\"}}]",
    "index-out-of-range": "{{index .list 5}}",
    "index-float": "{{index .list 1.0}}",
    "eq-strings": "{{eq .uuid \"a1b2c3d4\"}} {{eq .uuid \"x\" \"a1b2c3d4\"}} {{ne .uuid \"x\"}}",
    "eq-float": "{{eq .count 3.0}} {{eq .ratio 2.5}}",
    "eq-int-float": "{{eq .count 3}}",
    "eq-bool": "{{eq .yes true}}",
    "eq-list": "{{eq .list .list}}",
    "eq-nil": "{{eq .nothing .nothing}}",
    "lt-gt": "{{lt 1 2}} {{le 2 2}} {{gt 3.5 1.5}} {{ge \"b\" \"a\"}} {{lt .count 10.0}}",
    "lt-mixed": "{{lt .count 10}}",
    "print": "{{print \"a\" 1 2 \"b\" .yes}}|{{println \"x\" 1}}|",
    "printf-verbs": "{{printf \"%s|%5s|%-5s|%q|%v|%d|%5d|%05d|%x|%X|%o|%t|%c\" \"a\" \"b\" \"c\" \"d\" .list 42 7 -7 255 255 8 true 65}}",
    "printf-floats": "{{printf \"%f|%.2f|%8.3f|%e|%g|%G|%v\" .ratio .ratio .ratio .big .tiny .big .big}}",
    "printf-wrong-type": "{{printf \"%d|%s\" .count .count}}",
    "printf-missing-extra": "{{printf \"%s %s\" \"a\"}}|{{printf \"%s\" \"a\" \"b\" 3}}",
    "printf-percent": "{{printf \"100%%\"}}",
    # as data dirs write them
    "comma-list": "{{range $i, $h := .hosts}}{{if $i}},{{end}}{{$h.name}}={{$h.ip}}{{end}}",
    "yaml-block": "units:\n{{- range .list}}\n  - name: {{.}}.service\n    enabled: true\n{{- end}}\n",
    "if-and-eq": "{{if and (eq .uuid \"a1b2c3d4\") (not .no)}}match{{end}}",
    "printf-join": "{{range $i, $x := .list}}{{if gt $i 0}} {{end}}{{printf \"%q\" $x}}{{end}}",
    # errors at execution
    "missing-key": "line one\n{{.missing_key}}",
    "missing-deep": "{{.request.query.nope}}",
    "field-of-string": "{{.uuid.x}}",
    "field-of-nil": "{{.nothing.x}}",
    "arg-to-field": "{{.uuid 1}}",
    "len-number": "{{len .count}}",
    "range-missing": "{{range .missing}}{{end}}",
    # errors at parse time
    "unclosed-action": "a {{.uuid",
    "unclosed-if": "{{if .yes}}x",
    "stray-end": "x{{end}}",
    "stray-else": "{{else}}",
    "unknown-function": "text\n{{frobnicate .uuid}}",
    "undefined-variable": "{{$nope}}",
    "empty-action": "{{}}",
    "break-outside-range": "{{break}}",
    "unclosed-paren": "{{printf \"%s\" (.uuid}}",
    "bad-number": "{{3x}}",
}


def run_go(cases: dict[str, str], data: dict) -> dict[str, dict]:
    build = HERE / "gotemplate.go"
    binary = Path("/tmp") / "bootd-gotemplate-ref"
    subprocess.run(["go", "build", "-o", str(binary), str(build)], check=True, env={
        "HOME": "/tmp", "GOCACHE": "/tmp/bootd-go-cache", "GOFLAGS": "-mod=mod", "PATH": "/usr/bin:/bin",
        "GO111MODULE": "off"})
    names = list(cases)
    payload = json.dumps([{"template": cases[n], "data": data} for n in names])
    out = subprocess.run([str(binary)], input=payload, capture_output=True, text=True, check=True).stdout
    return dict(zip(names, json.loads(out)))


def main() -> int:
    answers = run_go(CASES, META)
    (HERE / "gotemplate_cases.json").write_text(json.dumps(
        {"data": META, "cases": {n: {"template": CASES[n], **answers[n]} for n in CASES}}, indent=1,
        ensure_ascii=False) + "\n")
    print(f"recorded {len(CASES)} answers from go", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
