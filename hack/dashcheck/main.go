// Command dashcheck validates Grafana dashboard JSON files against Grafana's dashboard
// model as published by the Grafana Foundation SDK: a strict unmarshal (unknown fields,
// wrong types and missing required fields are errors, down to the panel options and
// Prometheus queries of the registered panel and datasource plugins), then Validate.
//
// Usage: dashcheck FILE...
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// A few facts Grafana needs that the model leaves optional.
func extraChecks(d dashboard.Dashboard) []string {
	var problems []string
	if d.Uid == nil || *d.Uid == "" {
		problems = append(problems, "uid is missing")
	}
	if d.Title == nil || *d.Title == "" {
		problems = append(problems, "title is missing")
	}
	if d.SchemaVersion < 39 {
		problems = append(problems, fmt.Sprintf("schemaVersion %d < 39", d.SchemaVersion))
	}
	ids := map[uint32]bool{}
	for i, p := range d.Panels {
		if p.Panel == nil {
			continue
		}
		if p.Panel.Id != nil {
			if ids[*p.Panel.Id] {
				problems = append(problems, fmt.Sprintf("panels[%d]: duplicate id %d", i, *p.Panel.Id))
			}
			ids[*p.Panel.Id] = true
		}
		if p.Panel.GridPos == nil {
			problems = append(problems, fmt.Sprintf("panels[%d]: gridPos is missing", i))
		}
	}
	return problems
}

// droppedFields lists the paths of non-null input fields missing after the round trip.
func droppedFields(path string, in, out any) []string {
	var dropped []string
	switch value := in.(type) {
	case map[string]any:
		other, ok := out.(map[string]any)
		if !ok {
			return []string{path}
		}
		for key, child := range value {
			if empty(child) {
				continue // null, [] and {} are dropped by omitempty, not by the model
			}
			got, found := other[key]
			if !found {
				dropped = append(dropped, path+"."+key)
				continue
			}
			dropped = append(dropped, droppedFields(path+"."+key, child, got)...)
		}
	case []any:
		other, ok := out.([]any)
		if !ok || len(other) != len(value) {
			return []string{path}
		}
		for i := range value {
			dropped = append(dropped, droppedFields(fmt.Sprintf("%s[%d]", path, i), value[i], other[i])...)
		}
	}
	return dropped
}

func empty(value any) bool {
	switch v := value.(type) {
	case nil:
		return true
	case []any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}

func check(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !json.Valid(raw) {
		return fmt.Errorf("not valid JSON")
	}
	var d dashboard.Dashboard
	if err := d.UnmarshalJSONStrict(raw); err != nil {
		return fmt.Errorf("strict unmarshal: %w", err)
	}
	if err := d.Validate(); err != nil {
		return fmt.Errorf("validate: %w", err)
	}
	// Catch-all for the few places the SDK decodes leniently (fieldConfig.defaults): a
	// field that survives neither the strict decode nor re-encoding is unknown to the model.
	encoded, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("re-encode: %w", err)
	}
	var in, out any
	if err := json.Unmarshal(raw, &in); err != nil {
		return err
	}
	if err := json.Unmarshal(encoded, &out); err != nil {
		return err
	}
	if dropped := droppedFields("", in, out); len(dropped) > 0 {
		return fmt.Errorf("fields unknown to the dashboard model: %v", dropped)
	}
	if problems := extraChecks(d); len(problems) > 0 {
		return fmt.Errorf("%v", problems)
	}
	fmt.Printf("%s: ok (%d panels, %d variables)\n", path, len(d.Panels), len(d.Templating.List))
	return nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dashcheck FILE...")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, path := range os.Args[1:] {
		if err := check(path); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
