package loader

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"

	"golang.org/x/sys/unix"
)

// perfKsymbol is what PERF_RECORD_KSYMBOL says about a BPF program's
// symbol, "bpf_prog_<tag>_<name>".
type perfKsymbol struct {
	tag        [8]byte
	name       string
	unregister bool
}

// progNameMax is the longest name bpf_prog_info carries (BPF_OBJ_NAME_LEN
// minus its NUL).
const progNameMax = 15

// parseKsymbol parses the body of a KSYMBOL record without its sample_id
// trailer: u64 addr, u32 len, u16 ksym_type, u16 flags, NUL-padded name.
// It reports false for symbols that are not BPF programs (trampolines,
// dispatchers, out-of-line code).
func parseKsymbol(body []byte) (perfKsymbol, bool) {
	var ksym perfKsymbol
	if len(body) < perfKsymbolHeadSize ||
		binary.NativeEndian.Uint16(body[12:14]) != unix.PERF_RECORD_KSYMBOL_TYPE_BPF {
		return ksym, false
	}
	ksym.unregister = binary.NativeEndian.Uint16(body[14:16])&unix.PERF_RECORD_KSYMBOL_FLAGS_UNREGISTER != 0
	sym := body[perfKsymbolHeadSize:]
	if i := bytes.IndexByte(sym, 0); i >= 0 {
		sym = sym[:i]
	}
	rest, ok := bytes.CutPrefix(sym, []byte("bpf_prog_"))
	if !ok || len(rest) < 2*len(ksym.tag) {
		return ksym, false
	}
	if _, err := hex.Decode(ksym.tag[:], rest[:2*len(ksym.tag)]); err != nil {
		return ksym, false
	}
	switch name := rest[2*len(ksym.tag):]; {
	case len(name) == 0: // a program loaded without a name
	case name[0] != '_':
		return ksym, false
	default:
		// The symbol has the BTF function name when the program has BTF,
		// else the name given at load; bpf_prog_info has its first 15 bytes.
		name = name[1:]
		ksym.name = string(name[:min(len(name), progNameMax)])
	}
	return ksym, true
}

// perfNames keeps the names of KSYMBOL records until the BPF_EVENT of the
// same program arrives. The kernel writes both from the same thread, KSYMBOL
// first (one per function of the program, the main one first), so thread,
// tag and direction find the name; the main function has the program's tag,
// the others tags of their own. They are usually on the same CPU ring;
// a thread that migrated in between leaves them on two rings, which the
// merge by time puts back in order when both are read in the same pass.
type perfNames map[perfNameKey]perfNameEntry

type perfNameKey struct {
	tid        uint32
	tag        [8]byte
	unregister bool
}

type perfNameEntry struct {
	name string
	time uint64
}

// perfNamesKept is how many names may wait before expire drops old ones;
// perfNameTTL is how old (kernel nanoseconds) a name may get then. Only
// names of further functions, and of programs whose BPF_EVENT was refused
// or read first, wait that long.
const (
	perfNamesKept = 256
	perfNameTTL   = 1_000_000_000
)

// put records the name of a KSYMBOL record. The functions of a program
// other than the main one have tags of their own: their names wait unused
// until expire drops them. An entry left over from an earlier program with
// the same thread and tag (its BPF_EVENT was refused) is replaced.
func (n perfNames) put(rec perfRecord) {
	key := perfNameKey{tid: rec.ev.TID, tag: rec.ksym.tag, unregister: rec.ksym.unregister}
	n[key] = perfNameEntry{name: rec.ksym.name, time: rec.ev.KernelTime}
}

// name returns ev with the name of its KSYMBOL, which it consumes.
func (n perfNames) name(ev ProgramEvent) ProgramEvent {
	key := perfNameKey{tid: ev.TID, tag: ev.Tag, unregister: ev.Kind == EventRelease}
	if entry, ok := n[key]; ok {
		ev.Name = entry.name
		delete(n, key)
	}
	return ev
}

// expire drops names older than perfNameTTL at kernel time now, once more
// than perfNamesKept wait.
func (n perfNames) expire(now uint64) {
	if len(n) <= perfNamesKept {
		return
	}
	for key, entry := range n {
		if entry.time < now && now-entry.time > perfNameTTL {
			delete(n, key)
		}
	}
}
