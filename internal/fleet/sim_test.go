package fleet

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// simShape is the size of a synthetic node: the fleet has 20
// gadgets of 5 programs and 30 unowned programs per node.
type simShape struct{ gadgets, programs, unowned int }

var fleetShape = simShape{gadgets: 20, programs: 5, unowned: 30}

// simNode makes one interval of a synthetic node with realistic rows,
// as publish's types encode them: the gadget, _unowned and _node
// messages, then the _summary.
func simNode(tb testing.TB, node string, seq uint64, at time.Time, shape simShape) (detail []msg, summary msg) {
	tb.Helper()
	h := publish.Header{Schema: publish.SchemaVersion, Node: node, Seq: seq, Time: at, Elapsed: time.Second,
		Interval: time.Second, Instance: "sim-" + node, Part: 1, Parts: 1}
	enc := func(token string, v any) msg {
		data, err := json.Marshal(v)
		if err != nil {
			tb.Fatal(err)
		}
		return msg{subject: "bpfstats." + node + "." + token, data: data}
	}
	row := func(g publish.GadgetIdentity, prog uint32) state.Row {
		return state.Row{
			GadgetID: g.ID, GadgetName: g.Name, GadgetImage: g.Image, ProgID: prog,
			ProgName: fmt.Sprintf("prog_%d", prog), ProgType: "tracepoint",
			Totals: state.Totals{Runtime: seq * 1000 * uint64(prog), Runcount: seq * 10, RuntimeDelta: 1000,
				RuncountDelta: 10, CPUPercent: 0.01, MapMemory: 4096, MapCount: 2},
			PIDs: []uint32{4242}, Comms: []string{"gadget"}, MapIDs: []uint32{prog * 2, prog*2 + 1},
			Loader: &state.ProcessRef{PID: 4242, Comm: "gadget", Exe: "/usr/bin/gadget"},
			Tag:    "0123456789abcdef", Cost: state.Cost{NsPerRun: 100, RunsPerSecond: 10},
			Placement: state.Placement{Cgroup: "/kubepods.slice/pod1/cri-containerd-abc", Unit: "cri-containerd-abc.scope"},
		}
	}
	sum := publish.SummaryMessage{Unowned: publish.MessageTotals{ProgramCount: shape.unowned, Runtime: seq}}
	prog := uint32(1)
	for i := range shape.gadgets {
		id := publish.GadgetIdentity{ID: fmt.Sprintf("%s-g%02d-0123456789abcdef", node, i),
			Name: fmt.Sprintf("gadget-%02d", i), Image: fmt.Sprintf("ghcr.io/example/gadget-%02d:v1", i%10)}
		totals := publish.MessageTotals{Runtime: seq * 1000, Runcount: seq * 10, RuntimeDelta: 1000,
			RuncountDelta: 10, CPUPercent: 0.05, MapMemory: 8192, MapCount: 4, ProgramCount: shape.programs}
		gh := h
		gh.Type = publish.TypeGadget
		m := publish.GadgetMessage{Header: gh, Gadget: id, Owner: state.ProcessRef{PID: 4242, Comm: "gadget", Exe: "/usr/bin/gadget"}, Totals: totals}
		for range shape.programs {
			m.Programs = append(m.Programs, row(id, prog))
			prog++
		}
		detail = append(detail, enc(id.ID, m))
		sum.Gadgets = append(sum.Gadgets, publish.GadgetSummary{Gadget: id, OwnerPID: 4242, Totals: totals})
	}
	uh := h
	uh.Type = publish.TypeUnowned
	u := publish.UnownedMessage{Header: uh, Totals: sum.Unowned}
	for range shape.unowned {
		u.Programs = append(u.Programs, row(publish.GadgetIdentity{}, prog))
		prog++
	}
	detail = append(detail, enc(publish.TokenUnowned, u))
	nh := h
	nh.Type = publish.TypeNode
	nm := publish.NodeMessage{Header: nh, NodeName: node, Version: "v1.0.0", Kernel: "6.12.0", Source: "perf",
		Counts: publish.NodeCounts{Programs: int(prog - 1), Gadgets: shape.gadgets, Unowned: shape.unowned}, Sweeps: seq}
	detail = append(detail, enc(publish.TokenNode, nm))
	sum.NodeMessage = nm
	sum.Type = publish.TypeSummary
	return detail, enc(publish.TokenSummary, sum)
}
