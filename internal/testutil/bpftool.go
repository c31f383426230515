package testutil

import (
	"encoding/json"
	"os/exec"
	"strconv"
	"testing"
)

// BpftoolProg is the part of "bpftool prog show -j" the tests compare with
// the tracker: bpftool is the independent check of the numbers.
type BpftoolProg struct {
	ID        uint32       `json:"id"`
	Type      string       `json:"type"`
	Name      string       `json:"name"`
	Tag       string       `json:"tag"`
	RunTimeNs uint64       `json:"run_time_ns"`
	RunCnt    uint64       `json:"run_cnt"`
	LoadedAt  int64        `json:"loaded_at"`
	MapIDs    []uint32     `json:"map_ids"`
	PIDs      []BpftoolPID `json:"pids"`
}

// BpftoolPID is one holder of a program as bpftool lists it.
type BpftoolPID struct {
	PID  uint32 `json:"pid"`
	Comm string `json:"comm"`
}

// BpftoolMap is the part of "bpftool map show -j" the tests compare.
type BpftoolMap struct {
	ID           uint32 `json:"id"`
	Type         string `json:"type"`
	Name         string `json:"name"`
	BytesKey     uint32 `json:"bytes_key"`
	BytesValue   uint32 `json:"bytes_value"`
	MaxEntries   uint32 `json:"max_entries"`
	Flags        uint32 `json:"flags"`
	BytesMemlock uint64 `json:"bytes_memlock"`
}

// Bpftool runs bpftool with -j and decodes its output into v. A missing
// bpftool fails the test: "make test" needs it (apt-get install bpftool).
func Bpftool(tb testing.TB, v any, args ...string) {
	tb.Helper()
	path, err := exec.LookPath("bpftool")
	if err != nil {
		tb.Fatalf("bpftool is needed as the independent check (apt-get install bpftool): %v", err)
	}
	out, err := exec.Command(path, append(args, "-j")...).Output()
	if err != nil {
		tb.Fatalf("bpftool %v: %v", args, err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		tb.Fatalf("decoding bpftool %v: %v\n%s", args, err, out)
	}
}

// BpftoolProgs lists the kernel's programs with bpftool, keyed by ID.
func BpftoolProgs(tb testing.TB) map[uint32]BpftoolProg {
	tb.Helper()
	var list []BpftoolProg
	Bpftool(tb, &list, "prog", "show")
	progs := make(map[uint32]BpftoolProg, len(list))
	for _, p := range list {
		progs[p.ID] = p
	}
	return progs
}

// BpftoolMapMemory sums the memlock of maps as bpftool reports it.
func BpftoolMapMemory(tb testing.TB, ids []uint32) uint64 {
	tb.Helper()
	var sum uint64
	for _, id := range ids {
		var m BpftoolMap
		Bpftool(tb, &m, "map", "show", "id", strconv.FormatUint(uint64(id), 10))
		sum += m.BytesMemlock
	}
	return sum
}
