package publish

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// grafanaDashboard is the dashboard shipped for the tracker's metrics.
const grafanaDashboard = "../../deploy/grafana/bpfstats.json"

// promQLWords are PromQL's keywords and aggregation operators: words of an
// expression that are neither metric names nor function calls.
var promQLWords = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "count": true, "group": true,
	"stddev": true, "stdvar": true, "topk": true, "bottomk": true, "quantile": true,
	"count_values": true, "limitk": true, "limit_ratio": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true, "atan2": true,
	"inf": true, "nan": true,
}

// grouping are the words followed by a parenthesized list of label names.
var grouping = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

// labelValuesLast matches the label argument of Grafana's
// label_values(selector, label), which is a label, not a metric.
var labelValuesLast = regexp.MustCompile(`^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)

// promQLMetrics returns the metric names expr selects: the identifiers
// that are not in a label matcher ({...}), a string, a grouping label list,
// a Grafana variable ($node, ${x}), a number or duration, a function call
// or a keyword.
func promQLMetrics(expr string) []string {
	if m := labelValuesLast.FindStringSubmatch(expr); m != nil {
		expr = m[1]
	}
	var names []string
	isStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isPart := func(c byte) bool { return isStart(c) || c >= '0' && c <= '9' }
	skipSpace := func(i int) int {
		for i < len(expr) && (expr[i] == ' ' || expr[i] == '\t' || expr[i] == '\n') {
			i++
		}
		return i
	}
	skipTo := func(i int, end byte) int {
		for i < len(expr) && expr[i] != end {
			if expr[i] == '"' {
				i = skipString(expr, i)
				continue
			}
			i++
		}
		return i + 1
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			i = skipString(expr, i)
		case c == '{':
			i = skipTo(i+1, '}')
		case c == '$':
			i++
			if i < len(expr) && expr[i] == '{' {
				i = skipTo(i+1, '}')
			}
			for i < len(expr) && isPart(expr[i]) {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isPart(expr[i]) || expr[i] == '.') {
				i++
			}
		case isStart(c):
			start := i
			for i < len(expr) && isPart(expr[i]) {
				i++
			}
			word := expr[start:i]
			next := skipSpace(i)
			switch {
			case grouping[word] && next < len(expr) && expr[next] == '(':
				i = skipTo(next+1, ')')
			case promQLWords[word]:
			case next < len(expr) && expr[next] == '(':
				// A function call.
			default:
				names = append(names, word)
			}
		default:
			i++
		}
	}
	return names
}

// skipString returns the index after the string literal starting at i.
func skipString(s string, i int) int {
	quote := s[i]
	for i++; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case quote:
			return i + 1
		}
	}
	return i
}

func TestPromQLMetrics(t *testing.T) {
	for expr, want := range map[string][]string{
		`topk(10, sum by (instance, gadgetName) (rate(runtime_total{progID="", gadgetName=~"$gadget"}[$__rate_interval])) / 1e9)`: {"runtime_total"},
		`time() - tracker_last_sweep_timestamp_seconds{instance=~"$node"}`:                                                        {"tracker_last_sweep_timestamp_seconds"},
		`label_values(tracker_build_info{job=~"$job"}, instance)`:                                                                 {"tracker_build_info"},
		`histogram_quantile(0.99, sum without (job) (rate(x_bucket[5m]))) / on (instance) group_left (a, b) y offset 1h`:          {"x_bucket", "y"},
		`a{l="}"} + ${DS} * b[1m:30s] and c`:                                                                                      {"a", "b", "c"},
	} {
		if got := promQLMetrics(expr); !slices.Equal(got, want) {
			t.Errorf("promQLMetrics(%s) = %q, want %q", expr, got, want)
		}
	}
}

// goldenMetricNames returns every metric family and sample name in the
// metrics golden files: what a tracker's /metrics can serve.
func goldenMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	names := make(map[string]bool)
	for _, file := range []string{"metrics_all.golden", "metrics_gadgets.golden"} {
		f, err := os.Open(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := sc.Text()
			if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
				line = rest
			} else if strings.HasPrefix(line, "#") || line == "" {
				continue
			}
			if i := strings.IndexAny(line, "{ "); i > 0 {
				names[line[:i]] = true
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return names
}

// dashboardQueries returns every PromQL expression of the dashboard: its
// panels' targets (rows' nested panels included) and its templating
// queries, each with where it is.
func dashboardQueries(t *testing.T, dash map[string]any) map[string]string {
	t.Helper()
	queries := make(map[string]string)
	var walkPanels func(panels []any)
	walkPanels = func(panels []any) {
		for _, p := range panels {
			panel, _ := p.(map[string]any)
			title, _ := panel["title"].(string)
			targets, _ := panel["targets"].([]any)
			if panel["type"] != "row" && len(targets) == 0 {
				t.Errorf("panel %q has no query", title)
			}
			for _, tg := range targets {
				target, _ := tg.(map[string]any)
				expr, _ := target["expr"].(string)
				if expr == "" {
					t.Errorf("panel %q: target without expr: %v", title, target)
				}
				queries[expr] = "panel " + title
			}
			nested, _ := panel["panels"].([]any)
			walkPanels(nested)
		}
	}
	panels, _ := dash["panels"].([]any)
	walkPanels(panels)
	templating, _ := dash["templating"].(map[string]any)
	vars, _ := templating["list"].([]any)
	for _, v := range vars {
		variable, _ := v.(map[string]any)
		if variable["type"] != "query" {
			continue
		}
		q := variable["query"]
		if obj, ok := q.(map[string]any); ok {
			q = obj["query"]
		}
		expr, _ := q.(string)
		queries[expr] = "variable " + variable["name"].(string)
	}
	return queries
}

// TestGrafanaDashboard checks that every metric the shipped dashboard
// queries is one the tracker serves (its /metrics golden output), that it
// queries through its datasource variable, and that it has the node and
// gadget variables.
func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile(grafanaDashboard)
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", grafanaDashboard, err)
	}
	served := goldenMetricNames(t)
	queries := dashboardQueries(t, dash)
	used := make(map[string]bool)
	for expr, where := range queries {
		names := promQLMetrics(expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric found in %q", where, expr)
		}
		for _, name := range names {
			used[name] = true
			if !served[name] {
				t.Errorf("%s: metric %s is not in the /metrics golden output (%q)", where, name, expr)
			}
		}
	}
	for _, seed := range []string{"runtime_total", "runcount_total", "mapMemory", "mapCount"} {
		if !used[seed] {
			t.Errorf("the dashboard does not use the seed's %s", seed)
		}
	}

	// Every datasource reference is the variable, so that the dashboard
	// imports into any Grafana.
	for _, m := range regexp.MustCompile(`"uid":\s*"([^"]*)"`).FindAllSubmatch(data, -1) {
		if uid := string(m[1]); uid != "${DS_PROMETHEUS}" && uid != "bpfstats-tracker" {
			t.Errorf("datasource uid %q, want ${DS_PROMETHEUS}", uid)
		}
	}
	templating, _ := dash["templating"].(map[string]any)
	vars, _ := templating["list"].([]any)
	var names []string
	for _, v := range vars {
		names = append(names, v.(map[string]any)["name"].(string))
	}
	for _, want := range []string{"DS_PROMETHEUS", "node", "gadget"} {
		if !slices.Contains(names, want) {
			t.Errorf("dashboard variables %q lack %s", names, want)
		}
	}
}
