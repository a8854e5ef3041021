// ollama's side of fastft's Modelfile contract, for the tests: ollama's own Modelfile parser,
// template engine and chat-prompt path (vendored under vendor/github.com/ollama/ollama, and
// the server functions copied verbatim in ollama_server.go), driven through JSON.
//
// stdin: one JSON object (a case) or a JSON array of cases; stdout: one result per case (a JSON
// array for an array). A case's own failure (a parse error, a template that fails) is reported
// in its result; the program exits 1 only when its input is not JSON.
//
// {"mode": "parse", "modelfile": TEXT}
//
//	-> {"commands": [[name, args], ...], "create": {...}} as parser.ParseFile extracts them,
//	   "create" being what Modelfile.CreateRequest (what `ollama create` sends) makes of them:
//	   from, template, system, parameters, messages; or "create_error" when that step fails;
//	-> {"error": "..."} when ParseFile refuses the text.
//
// {"mode": "render", "template": T, "system": S, "family": F, "name": N, "messages": [...], "tools": [...], "think": ...}
//
//	-> {"prompt": P}: the prompt ollama's /api/chat builds for that api.ChatRequest (messages,
//	   tools, think (true|false|"high"|absent) are decoded as api.ChatRequest) from a model
//	   created with TEMPLATE T and SYSTEM S (or from "modelfile": TEXT, through the parser and
//	   CreateRequest as above, which also brings MESSAGE lines). F is the model family ollama
//	   reads from the GGUF (general.architecture: "qwen3" for Qwen3; it turns on
//	   filterThinkTags), N the model name.
//	-> {"error": "..."} where ollama would refuse the request or fail to render.
//
// The chat path is ollama's ChatHandler (server/routes.go) for a local GGUF model served with
// its Go TEMPLATE, in order: the thinking capability read from the template (think defaults to
// true when the template has think tags; think=true is refused when it has none), the tools
// capability check, the model's MESSAGEs and SYSTEM put before the request's messages,
// filterThinkTags, then chatPrompt -> renderPrompt -> template.Execute (which collates the
// messages). chatPrompt's truncation to num_ctx and image tags are not reproduced: the tests'
// prompts fit, and carry no images.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/parser"
	"github.com/ollama/ollama/template"
	"github.com/ollama/ollama/types/model"
)

type Case struct {
	Mode      string  `json:"mode"`
	Modelfile *string `json:"modelfile"`
	Template  string  `json:"template"`
	System    string  `json:"system"`
	Family    string  `json:"family"`
	Name      string  `json:"name"`
}

type Created struct {
	From       string         `json:"from"`
	Template   string         `json:"template"`
	System     string         `json:"system"`
	Parameters map[string]any `json:"parameters"`
	Messages   []api.Message  `json:"messages"`
}

type Result struct {
	Commands    *[][2]string `json:"commands,omitempty"`
	Create      *Created     `json:"create,omitempty"`
	CreateError string       `json:"create_error,omitempty"`
	Prompt      *string      `json:"prompt,omitempty"`
	Error       string       `json:"error,omitempty"`
}

// create runs ollama's parser and CreateRequest over a Modelfile. relativeDir is an empty
// folder, so FROM names no file there and is kept as a name, as for a model to pull.
func create(text string) (*parser.Modelfile, *api.CreateRequest, error, error) {
	f, err := parser.ParseFile(strings.NewReader(text))
	if err != nil {
		return nil, nil, err, nil
	}
	dir, err := os.MkdirTemp("", "gotemplate-")
	if err != nil {
		return f, nil, nil, err
	}
	defer os.RemoveAll(dir)
	req, err := f.CreateRequest(dir)
	return f, req, nil, err
}

func parse(c Case) Result {
	if c.Modelfile == nil {
		return Result{Error: "parse: no modelfile"}
	}
	f, req, perr, cerr := create(*c.Modelfile)
	if perr != nil {
		return Result{Error: perr.Error()}
	}
	commands := make([][2]string, 0, len(f.Commands))
	for _, cmd := range f.Commands {
		commands = append(commands, [2]string{cmd.Name, cmd.Args})
	}
	r := Result{Commands: &commands}
	if cerr != nil {
		r.CreateError = cerr.Error()
	} else {
		r.Create = &Created{From: req.From, Template: req.Template, System: req.System,
			Parameters: req.Parameters, Messages: req.Messages}
	}
	return r
}

func render(c Case, req api.ChatRequest) (string, error) {
	m := &Model{Name: c.Name, Config: model.ConfigV2{ModelFamily: c.Family}, System: c.System}
	tmpl := c.Template
	if c.Modelfile != nil {
		_, created, perr, cerr := create(*c.Modelfile)
		if perr != nil {
			return "", perr
		}
		if cerr != nil {
			return "", cerr
		}
		tmpl, m.System, m.Messages = created.Template, created.System, created.Messages
	}
	if m.Name == "" {
		m.Name = "fastft-test"
	}
	if req.Model == "" {
		req.Model = m.Name
	}
	if tmpl == "" {
		// ollama would serve the GGUF's own chat template, which is not reproduced here.
		return "", fmt.Errorf("no TEMPLATE")
	}
	t, err := template.Parse(tmpl)
	if err != nil {
		return "", err
	}
	m.Template = t

	// ChatHandler (server/routes.go), from `caps := ...` to chatPrompt, for this model.
	caps := []model.Capability{model.CapabilityCompletion}
	if len(req.Tools) > 0 {
		caps = append(caps, model.CapabilityTools)
	}

	modelCaps := m.Capabilities()
	if slices.Contains(modelCaps, model.CapabilityThinking) {
		caps = append(caps, model.CapabilityThinking)
		if req.Think == nil {
			req.Think = &api.ThinkValue{Value: true}
		}
	} else {
		if req.Think != nil && req.Think.Bool() {
			return "", fmt.Errorf("%q does not support thinking", req.Model)
		}
	}
	// scheduleRunner (server/routes.go)
	if err := m.CheckCapabilities(caps...); err != nil {
		return "", fmt.Errorf("%s %w", m.Name, err)
	}
	if len(req.Messages) == 0 {
		return "", fmt.Errorf("no messages (ollama only loads the model)")
	}

	msgs := append(m.Messages, req.Messages...)
	if req.Messages[0].Role != "system" && m.System != "" {
		msgs = append([]api.Message{{Role: "system", Content: m.System}}, msgs...)
	}
	msgs = filterThinkTags(msgs, m)

	return renderPrompt(m, msgs, req.Tools, req.Think)
}

func run(raw json.RawMessage) Result {
	var c Case
	if err := json.Unmarshal(raw, &c); err != nil {
		return Result{Error: "input: " + err.Error()}
	}
	switch c.Mode {
	case "parse":
		return parse(c)
	case "render":
		var req api.ChatRequest
		if err := json.Unmarshal(raw, &req); err != nil {
			return Result{Error: "request: " + err.Error()}
		}
		prompt, err := render(c, req)
		if err != nil {
			return Result{Error: err.Error()}
		}
		return Result{Prompt: &prompt}
	}
	return Result{Error: fmt.Sprintf("unknown mode %q (parse or render)", c.Mode)}
}

func main() {
	// ollama's code prints warnings with fmt.Printf (a deprecated PARAMETER): keep stdout for
	// the results.
	stdout := os.Stdout
	os.Stdout = os.Stderr

	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	in = bytes.TrimSpace(in)
	var out any
	if len(in) > 0 && in[0] == '[' {
		var cases []json.RawMessage
		if err := json.Unmarshal(in, &cases); err != nil {
			fmt.Fprintln(os.Stderr, "input:", err)
			os.Exit(1)
		}
		results := make([]Result, len(cases))
		for i, c := range cases {
			results[i] = run(c)
		}
		out = results
	} else {
		if !json.Valid(in) {
			fmt.Fprintln(os.Stderr, "input: not JSON")
			os.Exit(1)
		}
		out = run(in)
	}
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
