package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/rogpeppe/go-internal/testscript"
)

func init() {
	scriptCmds["jsonhas"] = cmdJSONHas
}

// jsonhas stdout|stderr|FILE PATH=VALUE... decodes the one JSON object in
// the output (or file) and checks the value at each dotted PATH
// (locks.0.holder). A string must equal VALUE; anything else must encode
// to VALUE (300, true, [], null). `! jsonhas OUT PATH` checks that PATH is
// absent.
func cmdJSONHas(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 || (neg && (len(args) != 2 || strings.Contains(args[1], "="))) {
		ts.Fatalf("usage: jsonhas stdout|stderr|FILE PATH=VALUE...; ! jsonhas stdout|stderr|FILE PATH")
	}
	text := ts.ReadFile(args[0]) // stdout and stderr are the last command's
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		ts.Fatalf("%s is not JSON: %v\n%s", args[0], err, text)
	}
	if dec.More() {
		ts.Fatalf("%s holds more than one JSON value:\n%s", args[0], text)
	}
	for _, check := range args[1:] {
		path, want, hasWant := strings.Cut(check, "=")
		got, found := lookupJSON(doc, path)
		switch {
		case neg && found:
			ts.Fatalf("%s: %s is present (%v), want it absent", args[0], path, got)
		case neg:
		case !found:
			ts.Fatalf("%s: no %s in %s", args[0], path, text)
		case !hasWant:
		case jsonText(got) != want:
			ts.Fatalf("%s: %s is %s, want %s", args[0], path, jsonText(got), want)
		}
	}
}

// lookupJSON follows a dotted path through objects and arrays.
func lookupJSON(v any, path string) (any, bool) {
	for _, step := range strings.Split(path, ".") {
		switch node := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = node[step]; !ok {
				return nil, false
			}
		case []any:
			i, err := strconv.Atoi(step)
			if err != nil || i < 0 || i >= len(node) {
				return nil, false
			}
			v = node[i]
		default:
			return nil, false
		}
	}
	return v, true
}

// jsonText is a string as it is, anything else as compact JSON.
func jsonText(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
