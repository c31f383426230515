// Package state keeps the inventory of BPF programs, merges their stats
// reads and groups them into gadgets, without calling the kernel itself.
package state

import (
	"runtime"
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// Label keys read from a gadget owner's environment (without the
// BPFSTATS_GADGET_ prefix).
const (
	labelName  = "NAME"
	labelImage = "IMAGE"
	labelID    = "ID"
)

// Label keys read from a program's .rodata (the bpf_metadata_ variables,
// without the prefix).
const (
	metaID    = "gadget_id"
	metaName  = "gadget_name"
	metaImage = "gadget_image"
)

// Options configures a Tracker.
type Options struct {
	// Node names this machine; it salts generated gadget IDs so that they
	// are unique across a fleet.
	Node string
	// Source is the name of the event source feeding the tracker, copied
	// into every Snapshot.
	Source string
	// now returns the current time; time.Now when nil. Tests set a clock.
	now func() time.Time
	// Self names the tracker's own process (PID, and the name and image
	// its gadget gets): its iterators and hooks are programs like any
	// other, shown as its own gadget so that its cost is visible.
	Self Self
	// IgnoreEventPIDs makes ownership come from fd holders only, never
	// from the PID of a load event. Set it when event PIDs are not in
	// this process's PID namespace (the fentry source in a container
	// without the host PID namespace, see loader.InChildPIDNamespace):
	// looked up in /proc they would name unrelated processes.
	IgnoreEventPIDs bool
	// CPUs is the number of online CPUs: CPUPercentNorm is CPUPercent
	// divided by it. runtime.NumCPU() when 0.
	CPUs int
	// StatsCost is what the kernel's stats accounting costs per program
	// run, as loader.MeasureStatsCost measured it; 0 when unknown, and
	// every StatsCostPercent is then 0.
	StatsCost time.Duration
	// Pods names the Kubernetes pods of containers (rows' PodName and
	// PodNamespace); nil leaves them empty.
	Pods PodResolver
	// Registry is where runners register programs as gadgets; nil: no
	// registrations (see registry.go).
	Registry Registry
}

// Self identifies the tracker's own process to the inventory.
type Self struct {
	PID         uint32
	Name, Image string
}

// Tracker is the inventory of programs and gadgets. It is not safe for
// concurrent use: one goroutine applies events and runs sweeps (see Run).
type Tracker struct {
	kernel Kernel
	opts   Options

	programs map[uint32]*program
	gadgets  map[gadgetKey]*gadget
	maps     map[uint32]*mapEntry
	// noLabels are the labels of every program without any, final: one
	// shared record, never written (see labelsOf).
	noLabels programLabels
	// noLink is the Attach of every row no link attaches, [NoLink]: one
	// shared slice, never written.
	noLink []string
	// epoch is when the Tracker was made: programs keep the time of their
	// last read as the time since.
	epoch time.Time
	// processes caches what was read of a process instance, keyed by PID
	// and checked against its start time.
	processes map[uint32]*loader.Process

	counters  Counters
	lastSweep time.Time
	// unowned is the accounting of the programs without a gadget.
	unowned ledger
	// seen is reused by every resync to avoid allocations.
	seen map[uint32]struct{}
	// order is the inventory in ID order and ids their IDs, brought up to
	// date only when orderStale (see sortedPrograms); orderAdded are the
	// programs inserted since.
	order      []*program
	ids        []uint32
	orderStale bool
	orderAdded []*program
	// sweepRead holds the PIDs already read in the current ownership
	// settling, so that a process holding many programs is read once.
	sweepRead map[uint32]struct{}

	// outbox holds the events to publish, in order, until Run hands them
	// to OnEvent (flush).
	outbox []*Event
	// gone holds programs the kernel released that the inventory no
	// longer (or never) holds, by ID, for a few sweeps: events about them
	// that arrive late pair up instead of being published alone.
	gone map[uint32]*goneProgram
	// audit counts what the last sweep's audit repaired, for the log.
	audit auditCount
	// reg is what was read of Options.Registry.
	reg registryState
	// pace runs the long kernel reads of the sweep in progress (see
	// pace.go); nil between sweeps.
	pace pacer

	// holdersStale is set when the holders must be scanned at the next
	// sweep: the inventory changed (a load, a release, an audit repair,
	// a resync) or the last scan left a program to settle again.
	holdersStale bool
	// sweepsSinceScan counts the sweeps since the last holders scan.
	sweepsSinceScan int
	// holdersScanned and memlockChanged tell the current sweep's rows
	// that the holders were scanned (comms may have changed) and that a
	// map's memlock changed.
	holdersScanned, memlockChanged bool

	// summed lists the gadgets with a row in the snapshot being built;
	// unownedSum is the unowned row's sum (see rows.go).
	summed     []*gadget
	unownedSum rowSum
	// rowGen numbers the changes of program rows' lists (see rowSum).
	rowGen      uint64
	commScratch []string
	// idBits is the bitmap of distinctIDs, for the sums' lists.
	idBits []uint64
	// rowVer numbers the changes of program rows (see program.rowVer).
	rowVer uint64
	// mapsStale is set when a program came, went or changed its maps
	// since the last readMaps; growingMaps counts the maps whose memlock
	// grows (MapInfo.MemlockGrows: read every sweep); mapScratch
	// serves merge, mapBatch batchReadMaps.
	mapsStale   bool
	growingMaps int
	mapScratch  []uint32
	mapBatch    []uint32
	// spare is storage for the next snapshot's program rows, from a
	// snapshot no consumer uses any more (RunConfig.RecycleSnapshots).
	spare snapshotStorage
}

// inventoryChanged notes that a program entered or left the inventory:
// the next sweep scans the holders and reads the maps.
func (t *Tracker) inventoryChanged() {
	t.holdersStale, t.orderStale, t.mapsStale = true, true, true
}

// instance names one process instance: a PID alone can be reused.
type instance struct {
	pid       uint32
	startTime uint64
}

// gadgetKey names one gadget: its owner instance (zero for labelled
// programs no process holds) and the key of its programs' labels ("" for
// programs without any): one process may run many labelled gadgets.
type gadgetKey struct {
	owner instance
	label string
}

// programLabels are the gadget labels a program carries in its .rodata.
type programLabels struct {
	id, name, image string
	// final is false when the read found no .rodata map on a program not
	// yet swept: its loader may bind one right after the load (as libbpf
	// does), so the next sweep reads again.
	final bool
}

// key tells labelled gadgets apart: by ID, else by name and image; "" for
// a program without labels.
func (l *programLabels) key() string {
	switch {
	case l == nil:
		return ""
	case l.id != "":
		return "id\x00" + l.id
	case l.name != "" || l.image != "":
		return "ni\x00" + l.name + "\x00" + l.image
	}
	return ""
}

// program is what the tracker keeps of one program. Thousands are kept:
// its fields are ordered so that it packs (flags together), and it stays
// within a size class (see TestProgramSize).
type program struct {
	id uint32
	// dropped is set when p leaves the inventory (see sortedPrograms).
	dropped bool
	// resolved is true once ownership was decided from an event or a holder.
	resolved bool
	// announced is true once its load was published: its release will be.
	announced bool
	read      bool // at least one successful stats read
	hasDelta  bool
	// placed is set when row.Placement, the loader's placement (the
	// owner's when no event named the loader), was set since row was
	// last refreshed: it is kept in the row alone (see place).
	placed bool
	// rowOK is set once row was built (see row).
	rowOK bool
	// rowShared is set once row is in a snapshot: it is read only from
	// then on, and replaced by a copy before any change (see ownRow).
	rowShared bool

	gadget *gadget // nil: unowned
	// loader is the process that loaded the program, when an event said so.
	loader *ProcessRef
	// labels are read once (see labelsOf); nil until then.
	labels *programLabels
	// registration is what the registry says about p (see registry.go),
	// nil for nothing (most programs: a pointer saves 40 bytes each).
	registration *registration

	// info is the last stats read; before the first, its Tag, Name and
	// Type are what events said (LoadTime is 0 until the first read).
	info loader.ProgramInfo
	// readAt is when info was read, as time since the Tracker's epoch: 8
	// bytes where a time.Time takes 24 (see TestProgramSize).
	readAt   time.Duration
	runtimeD uint64
	runcntD  uint64
	// interval is the time between the two reads the deltas span; 0
	// without a delta.
	interval time.Duration
	pids     []uint32
	// share is what p's holder counts of it (see retire.go).
	share share
	// row is p's row of the last snapshot, refreshed by the next (see
	// rows.go); never nil once p is in the inventory. rowGadget is the
	// gadget it was built for, rowGen the generation of its lists. Its
	// Placement is p's own (see place).
	row *Row
	// rowTag is the tag row.Tag was encoded from.
	rowTag    [8]byte
	rowGadget *gadget
	rowGen    uint64
	// rowVer is the Tracker's rowVer when row last changed in any field:
	// unique across programs, so that consumers reuse what they derived
	// from an unchanged row (see Snapshot.RowVersion).
	rowVer uint64
	// slowVer is the rowVer of the last change of row in any field but
	// its numbers (Totals and Cost): see Snapshot.SlowVersion.
	slowVer uint64
}

type gadget struct {
	info     Gadget
	key      gadgetKey
	programs int
	// ledger accumulates what the gadget's programs ran (see retire.go).
	ledger ledger
	// sum is its row's sum, of the snapshot numbered summedAt (the
	// sweep's Counters.Sweeps plus one).
	sum      rowSum
	summedAt uint64
}

type mapEntry struct {
	info loader.MapInfo
	// used marks maps referenced in the current sweep; the others are evicted.
	used bool
}

// New returns an empty Tracker reading through k.
func New(k Kernel, opts Options) *Tracker {
	if opts.now == nil {
		opts.now = time.Now
	}
	if opts.CPUs <= 0 {
		opts.CPUs = runtime.NumCPU()
	}
	return &Tracker{
		kernel:    k,
		opts:      opts,
		programs:  make(map[uint32]*program),
		gadgets:   make(map[gadgetKey]*gadget),
		maps:      make(map[uint32]*mapEntry),
		processes: make(map[uint32]*loader.Process),
		seen:      make(map[uint32]struct{}),
		gone:      make(map[uint32]*goneProgram),
		noLabels:  programLabels{final: true},
		noLink:    []string{NoLink},
		epoch:     opts.now(),
	}
}

var _ Kernel = (*loader.Kernel)(nil)
