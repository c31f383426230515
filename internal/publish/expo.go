package publish

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// The Prometheus text exposition format (version 0.0.4), written by hand:
// the tracker's series, its sweep histogram and the Go runtime and process
// metrics are a few dozen families, and linking client_golang for them
// cost every command about 1.5 MiB of resident binary pages and a
// millisecond or more of package initialisation (its protobuf
// dependencies included). The output is what client_golang's text encoder
// writes: families sorted by name, each metric's labels sorted by name,
// the metrics of a family sorted by their label values, numbers as Go's
// shortest 'g' form, and the same escapes; the golden files test it.

// expoContentType is the Content-Type of the text format, as promhttp
// sends it.
const expoContentType = "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"

// Metric family types.
const (
	typeCounter   = "counter"
	typeGauge     = "gauge"
	typeHistogram = "histogram"
	typeSummary   = "summary"
)

// expoLabel is one label of a metric.
type expoLabel struct{ name, value string }

// expoMetric is one metric of a family: a value, or the buckets (or
// quantiles) with their sum and count of a histogram (or summary).
type expoMetric struct {
	labels []expoLabel
	value  float64
	// bounds and counts are a histogram's bucket upper bounds and
	// cumulative counts, or a summary's quantiles and their values.
	bounds []float64
	counts []float64
	sum    float64
	count  uint64
}

// expoFamily is one metric family.
type expoFamily struct {
	name, help, typ string
	metrics         []expoMetric
}

// add appends a metric with value v and labels given as name, value
// pairs.
func (f *expoFamily) add(v float64, pairs ...string) {
	m := expoMetric{value: v}
	for i := 0; i+1 < len(pairs); i += 2 {
		m.labels = append(m.labels, expoLabel{pairs[i], pairs[i+1]})
	}
	f.metrics = append(f.metrics, m)
}

// gauge and counter return a family of one metric of value v, without
// labels.
func gauge(name, help string, v float64) expoFamily {
	return expoFamily{name: name, help: help, typ: typeGauge, metrics: []expoMetric{{value: v}}}
}

func counter(name, help string, v float64) expoFamily {
	return expoFamily{name: name, help: help, typ: typeCounter, metrics: []expoMetric{{value: v}}}
}

// writeExposition appends fams in the text format to b.
func writeExposition(b []byte, fams []expoFamily) []byte {
	slices.SortFunc(fams, func(x, y expoFamily) int { return strings.Compare(x.name, y.name) })
	for i := range fams {
		f := &fams[i]
		if len(f.metrics) == 0 {
			continue // as client_golang, which leaves out empty families
		}
		for j := range f.metrics {
			slices.SortFunc(f.metrics[j].labels, func(x, y expoLabel) int { return strings.Compare(x.name, y.name) })
		}
		slices.SortStableFunc(f.metrics, compareLabelValues)
		b = append(b, "# HELP "...)
		b = append(b, f.name...)
		b = append(b, ' ')
		b = appendEscaped(b, f.help, false)
		b = append(b, "\n# TYPE "...)
		b = append(b, f.name...)
		b = append(b, ' ')
		b = append(b, f.typ...)
		b = append(b, '\n')
		for j := range f.metrics {
			b = appendMetric(b, f, &f.metrics[j])
		}
	}
	return b
}

// compareLabelValues orders metrics by their label values, in the order
// of their (sorted) label names.
func compareLabelValues(x, y expoMetric) int {
	for k := range min(len(x.labels), len(y.labels)) {
		if c := cmp.Or(strings.Compare(x.labels[k].name, y.labels[k].name),
			strings.Compare(x.labels[k].value, y.labels[k].value)); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(x.labels), len(y.labels))
}

// appendMetric appends the sample lines of m, a metric of f.
func appendMetric(b []byte, f *expoFamily, m *expoMetric) []byte {
	switch f.typ {
	case typeHistogram, typeSummary:
		extra, suffix := "le", "_bucket"
		if f.typ == typeSummary {
			extra, suffix = "quantile", ""
		}
		for k, bound := range m.bounds {
			b = appendSample(b, f.name, suffix, m.labels, extra, appendFloat(nil, bound), m.counts[k])
		}
		if f.typ == typeHistogram {
			b = appendSample(b, f.name, suffix, m.labels, extra, []byte("+Inf"), float64(m.count))
		}
		b = appendSample(b, f.name, "_sum", m.labels, "", nil, m.sum)
		return appendSample(b, f.name, "_count", m.labels, "", nil, float64(m.count))
	}
	return appendSample(b, f.name, "", m.labels, "", nil, m.value)
}

// appendSample appends one line: name and suffix, the labels and, when
// extra is not empty, one more label of that name and value, then v.
func appendSample(b []byte, name, suffix string, labels []expoLabel, extra string, extraValue []byte, v float64) []byte {
	b = append(b, name...)
	b = append(b, suffix...)
	if len(labels) > 0 || extra != "" {
		b = append(b, '{')
		for k, l := range labels {
			if k > 0 {
				b = append(b, ',')
			}
			b = append(b, l.name...)
			b = append(b, `="`...)
			b = appendEscaped(b, l.value, true)
			b = append(b, '"')
		}
		if extra != "" {
			if len(labels) > 0 {
				b = append(b, ',')
			}
			b = append(b, extra...)
			b = append(b, `="`...)
			b = append(b, extraValue...)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	b = append(b, ' ')
	b = appendFloat(b, v)
	return append(b, '\n')
}

// appendFloat appends f as the text format writes numbers.
func appendFloat(b []byte, f float64) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, "NaN"...)
	case math.IsInf(f, 1):
		return append(b, "+Inf"...)
	case math.IsInf(f, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, 64)
}

// appendEscaped appends s with backslashes and newlines escaped, and
// double quotes in a label value.
func appendEscaped(b []byte, s string, quotes bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quotes:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// serveExposition writes body, gzipped when the client accepts it, as
// promhttp does.
func serveExposition(w http.ResponseWriter, r *http.Request, body []byte) {
	h := w.Header()
	h.Set("Content-Type", expoContentType)
	h.Add("Vary", "Accept-Encoding")
	if !acceptsGzip(r.Header.Get("Accept-Encoding")) {
		_, _ = w.Write(body)
		return
	}
	var z bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&z, gzip.BestSpeed)
	_, _ = zw.Write(body)
	if err := zw.Close(); err != nil {
		_, _ = w.Write(body)
		return
	}
	h.Set("Content-Encoding", "gzip")
	_, _ = w.Write(z.Bytes())
}

// acceptsGzip reports whether an Accept-Encoding header lists gzip with
// a weight above zero.
func acceptsGzip(header string) bool {
	for part := range strings.SplitSeq(header, ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		q, ok := strings.CutPrefix(strings.TrimSpace(params), "q=")
		if !ok {
			return true
		}
		w, err := strconv.ParseFloat(q, 64)
		return err == nil && w > 0
	}
	return false
}
