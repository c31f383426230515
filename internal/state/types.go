package state

import (
	"time"

	"github.com/bpfstats/tracker/internal/loader"
)

// Kernel is everything the tracker reads from the kernel, the extension
// point New takes: loader.Kernel implements it, the benchmarks wrap it to
// time the reads, and unit tests use a fake.
type Kernel interface {
	// ProgramIDs walks every program ID the kernel has (snapshot, resync).
	ProgramIDs() ([]uint32, error)
	// ReadProgram reads one program's info and stats. An error wrapping
	// os.ErrNotExist means the program is gone.
	ReadProgram(id uint32) (loader.ProgramInfo, error)
	// ReadMap reads one map. An error wrapping os.ErrNotExist means it is gone.
	ReadMap(id uint32) (loader.MapInfo, error)
	// ReadProcess reads a live process; os.ErrNotExist when it has exited.
	ReadProcess(pid uint32) (loader.Process, error)
	// Holders maps program IDs to the PIDs (thread group IDs) holding an fd to them.
	Holders() (map[uint32][]uint32, error)
}

// BatchReader is an extension point of Kernel: a kernel that reads many
// programs in one go (loader.Kernel, with a BPF iterator) implements it,
// and Sweep then prefers it to one ReadProgram per program.
type BatchReader interface {
	// ReadPrograms calls fn once for every ID of ids, with its info or an
	// error (wrapping os.ErrNotExist when the program is gone). info is
	// only valid during the call.
	ReadPrograms(ids []uint32, fn func(id uint32, info *loader.ProgramInfo, err error)) error
}

// MetadataReader is an extension point of Kernel: loader.Kernel reads the
// bpf_metadata_* variables of a program's .rodata, and the tracker then
// takes gadget labels from the programs themselves.
type MetadataReader interface {
	// ReadProgramMetadata reads program id's metadata variables.
	ReadProgramMetadata(id uint32) (loader.ProgramMetadata, error)
}

// CgroupResolver is an extension point of Kernel: loader.Kernel turns the
// cgroup ID of a load event (the fentry source's) into its path. Without
// it, or when it fails, the loader's cgroup comes from /proc
// (loader.Process.Cgroup).
type CgroupResolver interface {
	// CgroupPath returns the cgroup v2 path of cgroup id.
	CgroupPath(id uint64) (string, error)
}

// Gadget is one running instance of an eBPF tool: the programs owned by
// one process instance that carry the same program labels (none, for a
// process labelled from its environment only), or the labelled programs
// no process holds (kept by pins or links; Owner is then empty).
//
// Each of ID, Name and Image comes from the first of: the programs' own
// labels (the bpf_metadata_gadget_{id,name,image} variables of their
// .rodata, see loader.ReadProgramMetadata) or, for programs whose object
// has none, their registration (Options.Registry); then the owner's
// environment (BPFSTATS_GADGET_{ID,NAME,IMAGE}; the ID only for a gadget
// without program labels, since one process may run many), then the
// owner process itself.
type Gadget struct {
	// ID is the program label, BPFSTATS_GADGET_ID, or an 11-hex-digit
	// hash of the node, the owner instance and the program labels.
	ID string `json:"id"`
	// Name is the program label, BPFSTATS_GADGET_NAME or the owner's comm.
	Name string `json:"name"`
	// Image is the program label, BPFSTATS_GADGET_IMAGE or the owner's
	// executable path.
	Image string `json:"image"`
	// Owner is the process instance that owns the gadget's programs.
	Owner ProcessRef `json:"owner"`
	// Placement is where the owner runs.
	Placement
}

// Placement is where a process runs: its cgroup v2 path and what the path
// tells (see loader.ParseCgroupPath). Fields are empty when unknown.
type Placement struct {
	// Cgroup is the cgroup v2 path, "/system.slice/foo.service".
	Cgroup string `json:"cgroup,omitempty"`
	// Unit is the systemd unit, "foo.service"; inside a user manager
	// "user@1000.service/app.scope".
	Unit string `json:"unit,omitempty"`
	// Slice is the slice holding Unit ("system.slice", "user-1000.slice").
	Slice string `json:"slice,omitempty"`
	// ContainerID is the container's 64-hex-digit ID (containerd, CRI-O,
	// Docker, Podman naming).
	ContainerID string `json:"containerID,omitempty"`
	// PodUID and PodQoS are the Kubernetes pod's UID and QoS class
	// ("Guaranteed", "Burstable", "BestEffort").
	PodUID string `json:"podUID,omitempty"`
	PodQoS string `json:"podQoS,omitempty"`
	// PodName and PodNamespace come from the container runtime (see PodResolver).
	PodName      string `json:"podName,omitempty"`
	PodNamespace string `json:"podNamespace,omitempty"`
}

// unnamed is pl without the pod's name and namespace, which come from
// the pod resolver, not from the cgroup path.
func (pl Placement) unnamed() Placement {
	pl.PodName, pl.PodNamespace = "", ""
	return pl
}

// placementOf derives the Placement of a cgroup path.
func placementOf(cgroup string) Placement {
	if cgroup == "" {
		return Placement{}
	}
	cg := loader.ParseCgroupPath(cgroup)
	return Placement{
		Cgroup: cg.Path, Unit: cg.Unit, Slice: cg.Slice,
		ContainerID: cg.ContainerID, PodUID: cg.PodUID, PodQoS: cg.PodQoS,
	}
}

// ProcessRef is a process as reported to users.
type ProcessRef struct {
	PID  uint32 `json:"pid"`
	Comm string `json:"comm"`
	Exe  string `json:"exe"`
}

// Totals are the numbers of one program or of a set of programs (a
// gadget, the unowned programs, an image across nodes): every numeric
// column is one field here. A new numeric column is a field here plus its
// entry in the publish package's column list.
type Totals struct {
	// Runtime is cumulative run time in nanoseconds, Runcount the
	// cumulative number of runs. A program row has the kernel's counters.
	// A gadget row and the unowned row count every program the holder
	// ever had: what live ones ran since they came to it, and what the
	// ones that left (released, handed to another owner, made unowned)
	// ran in it up to the last sweep that read them. They never decrease
	// while the gadget exists; a program row's never decrease while the
	// program lives. So a gadget row is not the sum of its program rows.
	Runtime  uint64 `json:"runtime"`
	Runcount uint64 `json:"runcount"`
	// RuntimeDelta and RuncountDelta are the growth since the previous
	// sweep: a program's since its previous read, a gadget's or the
	// unowned row's since that row's previous snapshot. Zero on a row's
	// first snapshot; never negative.
	RuntimeDelta  uint64 `json:"runtimeDelta"`
	RuncountDelta uint64 `json:"runcountDelta"`
	// CPUPercent is RuntimeDelta over the real elapsed time between the
	// two reads (two snapshots for a gadget), in percent of one CPU.
	CPUPercent float64 `json:"cpuPercent"`
	// RecursionMisses is cumulative, accounted like Runtime.
	RecursionMisses uint64 `json:"recursionMisses"`
	// MapMemory is the memlock of the distinct maps used, in bytes;
	// MapCount counts those maps.
	MapMemory uint64 `json:"mapMemory"`
	MapCount  int    `json:"mapCount"`
	// ProgramCount is the number of programs summed. A program's own row
	// has 0, and its JSON omits the field; publish's messages always carry
	// it (publish.MessageTotals).
	ProgramCount int `json:"programCount,omitempty"`
}

// Add adds every field of o to t. The sums are right for disjoint sets of
// programs. Programs of one set may share maps, and Add cannot tell: the
// caller computes MapMemory and MapCount of such a set over its distinct
// maps (as Sweep does for gadget rows), and adds with those two fields
// zeroed.
func (t *Totals) Add(o Totals) {
	t.Runtime += o.Runtime
	t.Runcount += o.Runcount
	t.RuntimeDelta += o.RuntimeDelta
	t.RuncountDelta += o.RuncountDelta
	t.CPUPercent += o.CPUPercent
	t.RecursionMisses += o.RecursionMisses
	t.MapMemory += o.MapMemory
	t.MapCount += o.MapCount
	t.ProgramCount += o.ProgramCount
}

// Row is one line of the bpfstats table: a gadget (ProgID 0) or a program.
// JSON names are the seed's column names; the rest are additions.
type Row struct {
	NodeName    string `json:"nodeName,omitempty"`
	GadgetID    string `json:"gadgetID"`
	GadgetName  string `json:"gadgetName"`
	GadgetImage string `json:"gadgetImage"`
	ProgID      uint32 `json:"progID"`
	ProgName    string `json:"progName"`
	ProgType    string `json:"progType"`
	// Totals are the row's numbers; their JSON fields are the row's.
	Totals
	PIDs   []uint32    `json:"pids"`
	Comms  []string    `json:"comms"`
	Loader *ProcessRef `json:"loader,omitempty"`
	// MapIDs are the distinct maps the row accounts for.
	MapIDs []uint32 `json:"mapIDs,omitempty"`
	// Tag is the program tag in hex (programs only).
	Tag string `json:"tag,omitempty"`
	// Cost are the columns derived from Totals that explain the row's
	// cost; their JSON fields are the row's.
	Cost
	// Placement is where a program's loader ran when it loaded it (its
	// owner's when no load event named the loader), or where a gadget's
	// owner runs; empty on the unowned row.
	Placement
	// Attach says where a program is attached, one entry per BPF link
	// (see AttachReader), or is [NoLink]; empty on gadget rows and when
	// the kernel cannot list links.
	Attach []string `json:"attach,omitempty"`
}

// Snapshot is the result of one sweep.
type Snapshot struct {
	// Node is the tracker's node name.
	Node string
	Time time.Time
	// Elapsed since the previous sweep; zero on the first.
	Elapsed time.Duration
	// Source is the event source in use.
	Source string
	// Programs has one row per program, owned or not, sorted by ProgID.
	// The rows are shared, read only, with the Tracker and with later
	// snapshots in which they did not change: never write to one (copy
	// it). A Tracker replaces a program's row when it changes instead of
	// writing into it, so a sweep of programs that did not change copies
	// no row.
	Programs []*Row
	// Gadgets has one row per gadget, sorted by name then ID.
	Gadgets []Row
	// Unowned sums the programs without a gadget like a gadget row:
	// distinct maps counted once, empty gadget columns.
	Unowned Row
	// GadgetInfo holds each gadget's identity, keyed by gadget ID.
	GadgetInfo map[string]Gadget
	Counters   Counters
	// SweepDuration is how long the sweep's kernel reads took.
	SweepDuration time.Duration
	// versions are the RowVersion and SlowVersion of Programs, two per
	// row in index order; nil when the snapshot did not come from a
	// Tracker.
	versions []uint64
}

// RowVersion returns a number that changes whenever Programs[i] changes,
// except its Attach and pod name columns, which each snapshot takes from
// the sweep's walk of the links and from the pod resolver: two snapshots
// of one Tracker whose program rows have the same nonzero version have
// equal rows apart from those columns. 0
// means unknown (a snapshot not built by a Tracker): the row may differ
// from any other. A publisher uses it to reuse a row's encoding.
func (s *Snapshot) RowVersion(i int) uint64 {
	if i < 0 || 2*i >= len(s.versions) {
		return 0
	}
	return s.versions[2*i]
}

// SlowVersion is RowVersion for the fields of Programs[i] other than its
// numbers (Totals and Cost): it changes when any of them changes, not
// when only the numbers do. 0 means unknown. A publisher uses it to tell
// whether what rarely changes did, without looking at the row.
func (s *Snapshot) SlowVersion(i int) uint64 {
	if i < 0 || 2*i+1 >= len(s.versions) {
		return 0
	}
	return s.versions[2*i+1]
}

// Counters are the tracker's own running totals.
type Counters struct {
	EventsLoad    uint64 `json:"eventsLoad"`
	EventsRelease uint64 `json:"eventsRelease"`
	EventsLost    uint64 `json:"eventsLost"`
	Resyncs       uint64 `json:"resyncs"`
	Sweeps        uint64 `json:"sweeps"`
	// RepairsAdded counts programs a sweep's audit found in the kernel
	// but not in the inventory (their load event was lost or is late);
	// RepairsRemoved those it found in the inventory but gone from the
	// kernel (their release event was lost or is late).
	RepairsAdded   uint64 `json:"repairsAdded"`
	RepairsRemoved uint64 `json:"repairsRemoved"`
	// LoadsGone counts load events of programs already released when the
	// load was applied: never inserted, published as a load and its
	// release.
	LoadsGone uint64 `json:"loadsGone"`
	// AttributionsRejected counts load events whose PID named a process
	// started after the event (the PID was reused): not attributed.
	AttributionsRejected uint64 `json:"attributionsRejected"`
	// EventsDropped counts applied events Run did not hand to OnEvent:
	// its queue was full (a slow consumer), or Run ended on ctx with
	// events still queued. The inventory applied them all.
	EventsDropped uint64 `json:"eventsDropped"`
	// SnapshotsDropped counts snapshots Run did not hand to OnSnapshot: a
	// newer one replaced it while the consumer was busy, or Run ended on
	// ctx before it was taken.
	SnapshotsDropped uint64 `json:"snapshotsDropped"`
	// RegistrationsRemoved counts registry entries the sweeps removed
	// because their program was gone.
	RegistrationsRemoved uint64 `json:"registrationsRemoved"`
}

// Event is one program load or release after the inventory applied it, as
// published to consumers the moment it arrives.
type Event struct {
	// Kind is "load" or "release".
	Kind     string `json:"kind"`
	ProgID   uint32 `json:"progID"`
	ProgName string `json:"progName"`
	ProgType string `json:"progType"`
	Tag      string `json:"tag"`
	// Loader is the process that loaded the program, when known.
	Loader *ProcessRef `json:"loader,omitempty"`
	// Gadget the program belongs (belonged) to; nil when unowned.
	Gadget *Gadget `json:"gadget,omitempty"`
	// Runtime (nanoseconds) and Runcount are, on a release, the program's
	// cumulative counters as of the last sweep that read it: what it ran
	// between that sweep and the release is not counted (the kernel's
	// release hooks cannot sum per-CPU stats where its BTF has no type
	// tags). Zero on loads and for a program released before its first
	// sweep. Its gadget's cumulative includes the same values.
	Runtime  uint64 `json:"runtime,omitempty"`
	Runcount uint64 `json:"runcount,omitempty"`
	// KernelTime is the event source's kernel timestamp in nanoseconds.
	KernelTime uint64    `json:"kernelTime"`
	Time       time.Time `json:"time"`
}
