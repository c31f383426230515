package fleet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/publish"
)

// BenchmarkIngest measures the consumer's cost of one message and of one
// node-interval: the 22 detail messages of the node shape, or its
// one _summary. Nodes rotate so that every message is current.
func BenchmarkIngest(b *testing.B) {
	const nodes = 100
	b.Run("detail", func(b *testing.B) {
		var msgs [][]msg
		var bytes int
		for i := range nodes {
			d, _ := simNode(b, fmt.Sprintf("n%d", i), 1, testTime, fleetShape)
			msgs = append(msgs, d)
			for _, m := range d {
				bytes += len(m.data)
			}
		}
		benchIngest(b, New("", time.Second, nil), msgs, bytes)
	})
	b.Run("summary", func(b *testing.B) {
		var msgs [][]msg
		var bytes int
		for i := range nodes {
			_, s := simNode(b, fmt.Sprintf("n%d", i), 1, testTime, fleetShape)
			msgs = append(msgs, []msg{s})
			bytes += len(s.data)
		}
		benchIngest(b, New("", time.Second, nil), msgs, bytes)
	})
	// The decoding alone, with encoding/json into publish's type.
	b.Run("summary-unmarshal", func(b *testing.B) {
		_, s := simNode(b, "n0", 1, testTime, fleetShape)
		b.SetBytes(int64(len(s.data)))
		for b.Loop() {
			var m publish.SummaryMessage
			if err := json.Unmarshal(s.data, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// benchIngest ingests every node's interval per iteration (an op is one
// node-interval) and reports the cost per message.
func benchIngest(b *testing.B, f *Fleet, nodes [][]msg, bytes int) {
	b.Helper()
	b.SetBytes(int64(bytes / len(nodes)))
	b.ReportAllocs()
	perNode := len(nodes[0])
	i := 0
	for b.Loop() {
		for _, m := range nodes[i%len(nodes)] {
			if err := f.Ingest(m.subject, m.data); err != nil {
				b.Fatal(err)
			}
		}
		i++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*perNode), "ns/msg")
}

// tenThousandNodes is a summary view holding one summary of each of
// 10,000 nodes.
func tenThousandNodes(b *testing.B) *Fleet {
	b.Helper()
	f := summaryView(nil)
	for i := range 10000 {
		_, s := simNode(b, fmt.Sprintf("n%d", i), 1, time.Now(), fleetShape)
		if err := f.Ingest(s.subject, s.data); err != nil {
			b.Fatal(err)
		}
	}
	return f
}

// BenchmarkPrintByImage measures one print of "top --by image" over
// 10,000 nodes' summaries.
func BenchmarkPrintByImage(b *testing.B) {
	f := tenThousandNodes(b)
	var out bytes.Buffer
	for b.Loop() {
		out.Reset()
		if err := f.Render(&out, Options{By: "image"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPrintGadgetRows measures one print of "top" (a row per
// gadget) over 10,000 nodes' summaries: 200,000 rows.
func BenchmarkPrintGadgetRows(b *testing.B) {
	f := tenThousandNodes(b)
	var out bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		out.Reset()
		if err := f.Render(&out, Options{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(out.Len()), "bytes/print")
}
