// Package metricstest scrapes and reads Prometheus metrics in tests.
package metricstest

import (
	"fmt"
	"io"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// ScrapeAndParse GETs url and parses the body as the Prometheus text
// format. Metric and label names must be valid legacy (pre-UTF-8) names,
// which is what the tracker promises its consumers.
func ScrapeAndParse(url string) (map[string]*dto.MetricFamily, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("scraping %s: %s: %s", url, resp.Status, body)
	}
	return Parse(resp.Body)
}

// Parse parses the Prometheus text format.
func Parse(r io.Reader) (map[string]*dto.MetricFamily, error) {
	parser := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parsing metrics: %w", err)
	}
	return mfs, nil
}

// Find returns the metrics of family name whose labels include every pair
// of labels (a pair with an empty value also matches an absent label).
func Find(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) []*dto.Metric {
	mf := mfs[name]
	if mf == nil {
		return nil
	}
	var found []*dto.Metric
	for _, m := range mf.GetMetric() {
		if matches(m, labels) {
			found = append(found, m)
		}
	}
	return found
}

// Value returns the value of the one gauge, counter or untyped metric of
// family name matching labels. It fails when none or several match.
func Value(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, error) {
	found := Find(mfs, name, labels)
	if len(found) != 1 {
		return 0, fmt.Errorf("%s%v: %d series match, want 1", name, labels, len(found))
	}
	m := found[0]
	switch {
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue(), nil
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue(), nil
	case m.GetUntyped() != nil:
		return m.GetUntyped().GetValue(), nil
	}
	return 0, fmt.Errorf("%s%v: not a gauge, counter or untyped metric", name, labels)
}

// Labels returns a metric's labels as a map.
func Labels(m *dto.Metric) map[string]string {
	out := make(map[string]string, len(m.GetLabel()))
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

func matches(m *dto.Metric, want map[string]string) bool {
	have := Labels(m)
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
