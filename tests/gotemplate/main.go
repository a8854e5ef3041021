// Renders an ollama chat TEMPLATE the way ollama does, for fastft's template parity tests.
//
// stdin: {"template": "...", "data": {"System", "Messages", "Tools", "Response", "Think", "IsThinkSet"}}
// (one object), or a JSON array of such objects; stdout: the rendering (a JSON array of strings
// for an array input). Exit 1 with the error on stderr when parsing or executing fails.
//
// What mirrors ollama (template/template.go): Go's text/template with Option("missingkey=zero"),
// one extra function `json` (encoding/json.Marshal), and data passed as a map whose Messages
// and Tools are typed like ollama's api.Message and api.Tool, so field access behaves the same
// (a misspelt field is an error, as it is in ollama). Collating messages is done by the caller.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/template"
)

type ToolCallFunction struct {
	Index     int            `json:"index"`
	Name      string         `json:"name"`
	Arguments map[string]any `json:"arguments"`
}

type ToolCall struct {
	ID       string           `json:"id,omitempty"`
	Function ToolCallFunction `json:"function"`
}

type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking,omitempty"`
	Images     []string   `json:"images,omitempty"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolName   string     `json:"tool_name,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

// The tool types mirror what ollama hands a template (template.go's templateTool, built from
// api.Tool): parameters are a struct, not a map, so a template can only reach these fields.

// PropertyType is a JSON schema "type": a string or a list of strings (api.PropertyType).
type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*pt = []string{s}
		return nil
	}
	var a []string
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	*pt = a
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

type ToolProperty struct {
	AnyOf       []ToolProperty          `json:"anyOf,omitempty"`
	Type        PropertyType            `json:"type,omitempty"`
	Items       any                     `json:"items,omitempty"`
	Description string                  `json:"description,omitempty"`
	Enum        []any                   `json:"enum,omitempty"`
	Properties  map[string]ToolProperty `json:"properties,omitempty"`
	Required    []string                `json:"required,omitempty"`
}

type ToolFunctionParameters struct {
	Type       string                  `json:"type"`
	Defs       any                     `json:"$defs,omitempty"`
	Items      any                     `json:"items,omitempty"`
	Required   []string                `json:"required,omitempty"`
	Properties map[string]ToolProperty `json:"properties"`
}

type ToolFunction struct {
	Name        string                 `json:"name"`
	Description string                 `json:"description"`
	Parameters  ToolFunctionParameters `json:"parameters"`
}

type Tool struct {
	Type     string       `json:"type"`
	Items    any          `json:"items,omitempty"`
	Function ToolFunction `json:"function"`
}

type Data struct {
	System     string     `json:"System"`
	Messages   []*Message `json:"Messages"`
	Tools      []Tool     `json:"Tools"`
	Response   string     `json:"Response"`
	Think      bool       `json:"Think"`
	IsThinkSet bool       `json:"IsThinkSet"`
}

type Request struct {
	Template string `json:"template"`
	Data     Data   `json:"data"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

func render(r Request) (string, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(r.Template)
	if err != nil {
		return "", fmt.Errorf("parse: %w", err)
	}
	var tools any = r.Data.Tools
	if len(r.Data.Tools) == 0 {
		tools = nil // ollama passes a nil api.Tools when a request has none
	}
	var b bytes.Buffer
	err = tmpl.Execute(&b, map[string]any{
		"System":     r.Data.System,
		"Messages":   r.Data.Messages,
		"Tools":      tools,
		"Response":   r.Data.Response,
		"Think":      r.Data.Think,
		"IsThinkSet": r.Data.IsThinkSet,
	})
	if err != nil {
		return "", fmt.Errorf("execute: %w", err)
	}
	return b.String(), nil
}

func main() {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	in = bytes.TrimSpace(in)
	if len(in) > 0 && in[0] == '[' {
		var reqs []Request
		if err := json.Unmarshal(in, &reqs); err != nil {
			fmt.Fprintln(os.Stderr, "input:", err)
			os.Exit(1)
		}
		outs := make([]string, len(reqs))
		for i, r := range reqs {
			if outs[i], err = render(r); err != nil {
				fmt.Fprintf(os.Stderr, "request %d: %v\n", i, err)
				os.Exit(1)
			}
		}
		json.NewEncoder(os.Stdout).Encode(outs)
		return
	}
	var r Request
	if err := json.Unmarshal(in, &r); err != nil {
		fmt.Fprintln(os.Stderr, "input:", err)
		os.Exit(1)
	}
	out, err := render(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}
