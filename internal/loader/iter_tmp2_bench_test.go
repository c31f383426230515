package loader

import (
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

func TestTmpIterExp(t *testing.T) {
	b := &testing.B{}
	_ = b
	ids := benchLoadT(t, 5000)
	cpus, _ := possibleCPUs()
	vars := []string{"XFULL", "V2", "NONE", "NOSTATS", "NOMAPS"}
	var its []*bpfIter
	for _, v := range vars {
		spec, err := ebpf.LoadCollectionSpec("/tmp/iterexp/v_" + v + ".o")
		if err != nil {
			t.Fatal(err)
		}
		var list [iterMaxCPUs]uint32
		for i, cpu := range cpus {
			list[i] = uint32(cpu)
		}
		spec.Variables["nr_possible_cpus"].Set(uint32(len(cpus)))
		spec.Variables["possible_cpus"].Set(list)
		var objs struct {
			Prog *ebpf.Program `ebpf:"dump_progs"`
		}
		if err := spec.LoadAndAssign(&objs, nil); err != nil {
			t.Fatal(err)
		}
		it, err := attachIter(objs.Prog)
		if err != nil {
			t.Fatal(err)
		}
		its = append(its, it)
	}
	res := make([][]float64, len(vars))
	var buf []byte
	for range 200 {
		for i, it := range its {
			s := time.Now()
			buf, _ = it.read(buf)
			res[i] = append(res[i], float64(time.Since(s).Nanoseconds())/float64(len(ids)))
		}
	}
	for i, v := range vars {
		slices.Sort(res[i])
		t.Logf("%-8s min %.0f p25 %.0f med %.0f", v, res[i][0], res[i][len(res[i])/4], res[i][len(res[i])/2])
	}
}

func benchLoadT(t *testing.T, n int) []uint32 {
	for range n {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: "tk_bench", Type: ebpf.SocketFilter, License: "Dual MIT/GPL",
			Instructions: asmOne(m.FD()),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
	}
	k, _ := NewKernelWithOptions(KernelOptions{NoIterators: true})
	ids, _ := k.ProgramIDs()
	return ids
}

func asmOne(fd int) asm.Instructions {
	return asm.Instructions{asm.LoadMapPtr(asm.R1, fd), asm.Mov.Imm(asm.R0, 0), asm.Return()}
}
