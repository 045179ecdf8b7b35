// The reference for bootd's Go template engine: Go's own text/template, run the way matchbox runs it
// (missingkey=error, builtin functions only, data from encoding/json). Reads a JSON list of
// {"template": ..., "data": ...} on stdin and writes a JSON list of {"output": ...} or {"error": ...}.
package main

import (
	"bytes"
	"encoding/json"
	"os"
	"text/template"
)

type testCase struct {
	Template string          `json:"template"`
	Data     json.RawMessage `json:"data"`
}

type result struct {
	Output *string `json:"output,omitempty"`
	Error  *string `json:"error,omitempty"`
}

func run(c testCase) result {
	var data interface{}
	if err := json.Unmarshal(c.Data, &data); err != nil {
		panic(err)
	}
	tmpl, err := template.New("t").Option("missingkey=error").Parse(c.Template)
	if err != nil {
		message := err.Error()
		return result{Error: &message}
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, data); err != nil {
		message := err.Error()
		return result{Error: &message}
	}
	output := buf.String()
	return result{Output: &output}
}

func main() {
	var cases []testCase
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	results := make([]result, len(cases))
	for i, c := range cases {
		results[i] = run(c)
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		panic(err)
	}
}
