package publish

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/bpfstats/tracker/internal/state"
)

// Defaults of the NATS side.
const (
	// SchemaVersion is the "schema" field of every message.
	SchemaVersion = "bpfstats/v1"
	// DefaultSubjectPrefix is the first subject token(s) of every message.
	DefaultSubjectPrefix = "bpfstats"
	// DefaultKVBucket is the JetStream key-value bucket holding the latest
	// message of every gadget, node and unowned set.
	DefaultKVBucket = "bpfstats"
)

// Subject tokens after <prefix>.<node> that are not gadget IDs.
const (
	TokenUnowned = "_unowned"
	TokenEvents  = "_events"
	TokenNode    = "_node"
	TokenSummary = "_summary"
)

// Message types, the "type" field of every message.
const (
	TypeGadget  = "gadget"
	TypeUnowned = "unowned"
	TypeNode    = "node"
	TypeEvent   = "event"
	TypeSummary = "summary"
)

// Header is the part common to every interval message.
type Header struct {
	// Schema is SchemaVersion.
	Schema string `json:"schema"`
	// Type is one of TypeGadget, TypeUnowned, TypeNode, TypeSummary,
	// TypeEvent.
	Type string `json:"type"`
	// Node is the publishing node's subject token.
	Node string `json:"node"`
	// Seq numbers the publisher's intervals, from 1; all messages of one
	// interval carry the same Seq. It restarts with the tracker.
	Seq uint64 `json:"seq,omitempty"`
	// Time is the snapshot's time.
	Time time.Time `json:"time"`
	// Elapsed is the real time since the previous snapshot in nanoseconds;
	// zero on the first.
	Elapsed time.Duration `json:"elapsed"`
	// Interval is the publisher's configured interval in nanoseconds;
	// consumers use it to notice a node that stopped publishing.
	Interval time.Duration `json:"interval,omitempty"`
	// Instance names one run of the publishing tracker: random at start,
	// so a consumer orders a node's messages by (Instance, Seq) and sees a
	// restart, without trusting clocks.
	Instance string `json:"instance,omitempty"`
	// Part and Parts split one gadget's or _unowned's program rows (the
	// summary's gadgets) over several messages of the same Seq when they
	// would not fit the server's max_payload: Part counts from 1 to Parts.
	// Every part carries the whole totals. Both are 1 when the rows fit in
	// one message.
	Part  int `json:"part,omitempty"`
	Parts int `json:"parts,omitempty"`
}

// GadgetIdentity names a gadget in messages.
type GadgetIdentity struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Image string `json:"image"`
}

// MessageTotals are the totals of a gadget or _unowned message:
// state.Totals, whose JSON they are, except that programCount is always
// present (0 in an _unowned message without programs) where a program
// row's JSON omits it.
type MessageTotals state.Totals

// MarshalJSON encodes t as state.Totals, with programCount also when 0.
func (t MessageTotals) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		state.Totals
		// ProgramCount shadows the omitempty field of state.Totals.
		ProgramCount int `json:"programCount"`
	}{state.Totals(t), t.ProgramCount})
}

// Values of the Rows field of gadget and _unowned messages.
const (
	// RowsFull marks program rows with every field.
	RowsFull = "full"
	// RowsCompact marks program rows holding only CompactRow's fields:
	// the program's numbers, its other fields as in the gadget's last
	// RowsFull message (or key-value entry).
	RowsCompact = "compact"
)

// GadgetMessage is published on <prefix>.<node>.<gadgetID> every interval.
type GadgetMessage struct {
	Header
	Gadget GadgetIdentity   `json:"gadget"`
	Owner  state.ProcessRef `json:"owner"`
	Totals MessageTotals    `json:"totals"`
	// Rows is absent when the publisher sends full rows every interval
	// (the default); with NATSOptions.CompactRows it is RowsFull or
	// RowsCompact.
	Rows string `json:"rows,omitempty"`
	// Programs are the gadget's program rows, sorted by ProgID; in a
	// RowsCompact message only CompactRow's fields are set.
	Programs []state.Row `json:"programs"`
}

// UnownedMessage is published on <prefix>.<node>._unowned every interval,
// also when there are no unowned programs.
type UnownedMessage struct {
	Header
	Totals MessageTotals `json:"totals"`
	// Rows is as in GadgetMessage.
	Rows     string      `json:"rows,omitempty"`
	Programs []state.Row `json:"programs"`
}

// CompactRow is a program row of a RowsCompact message: the program's ID
// and the numbers that change every interval. Decoded into a state.Row it
// sets the same fields.
type CompactRow struct {
	ProgID uint32 `json:"progID"`
	state.Totals
	state.Cost
}

// NodeCounts are a node's inventory sizes and event totals.
type NodeCounts struct {
	Programs      int    `json:"programs"`
	Gadgets       int    `json:"gadgets"`
	Unowned       int    `json:"unowned"`
	EventsLoad    uint64 `json:"eventsLoad"`
	EventsRelease uint64 `json:"eventsRelease"`
	EventsLost    uint64 `json:"eventsLost"`
	// RepairsAdded and RepairsRemoved count what the sweeps' audits
	// repaired: programs the events missed, releases they missed.
	RepairsAdded   uint64 `json:"repairsAdded"`
	RepairsRemoved uint64 `json:"repairsRemoved"`
	// LoadsGone counts loads applied after their program was released
	// (published with their release); AttributionsRejected loads whose
	// PID named another process instance than the loader.
	LoadsGone            uint64 `json:"loadsGone"`
	AttributionsRejected uint64 `json:"attributionsRejected"`
	// EventsDropped and SnapshotsDropped count what a slow publisher
	// missed: the inventory applied every event all the same.
	EventsDropped    uint64 `json:"eventsDropped"`
	SnapshotsDropped uint64 `json:"snapshotsDropped"`
	// RegistrationsRemoved counts registry entries of programs gone.
	RegistrationsRemoved uint64 `json:"registrationsRemoved"`
}

// PublisherStats are the NATS sink's own counters.
type PublisherStats struct {
	// Published counts messages handed to the connection.
	Published uint64 `json:"published"`
	// SkippedIntervals counts intervals not published while disconnected.
	SkippedIntervals uint64 `json:"skippedIntervals"`
	// PublishErrors counts failed publishes, key-value writes and
	// asynchronous errors the server reported.
	PublishErrors uint64 `json:"publishErrors"`
	// Reconnects counts reconnections since start.
	Reconnects uint64 `json:"reconnects"`
	// KVWrites counts key-value writes and deletes sent (asynchronously);
	// KVSkipped those not sent because too many were in flight (retried
	// the next interval); KVErrors those that failed, also counted in
	// PublishErrors. All zero without NATSOptions.KV.
	KVWrites  uint64 `json:"kvWrites"`
	KVSkipped uint64 `json:"kvSkipped"`
	KVErrors  uint64 `json:"kvErrors"`
}

// NodeMessage is published on <prefix>.<node>._node every interval, after
// the interval's gadget and unowned messages.
type NodeMessage struct {
	Header
	// NodeName is the node's name as configured, a label (see
	// CleanLabel): the readable name when the node token is a hash.
	NodeName string `json:"nodeName"`
	Version  string `json:"version"`
	// Kernel is the node's uname release.
	Kernel string `json:"kernel"`
	// CPUs is the node's number of online CPUs, so that a consumer
	// normalizes cpuPercent as the node does (cpuPercentNorm); omitted by
	// trackers older than the field.
	CPUs int `json:"cpus,omitempty"`
	// Source is the event source in use.
	Source  string     `json:"source"`
	Counts  NodeCounts `json:"counts"`
	Resyncs uint64     `json:"resyncs"`
	Sweeps  uint64     `json:"sweeps"`
	// SweepDuration is how long the sweep's kernel reads took, in nanoseconds.
	SweepDuration time.Duration  `json:"sweepDuration"`
	Publisher     PublisherStats `json:"publisher"`
}

// SummaryMessage is published on <prefix>.<node>._summary every interval,
// last (after _node, with the same NodeMessage fields but Type
// TypeSummary): the node's health and each gadget's identity and totals in one
// compact message, what fleet-wide consumers follow (program rows stay on
// the gadget subjects, for drill-down).
type SummaryMessage struct {
	NodeMessage
	// Gadgets are the node's gadgets, sorted by name then ID; split over
	// parts (see Header.Part) when they do not fit one message.
	Gadgets []GadgetSummary `json:"gadgets"`
	// Unowned sums the programs without a gadget.
	Unowned MessageTotals `json:"unowned"`
}

// GadgetSummary is one gadget in a SummaryMessage.
type GadgetSummary struct {
	Gadget GadgetIdentity `json:"gadget"`
	// OwnerPID is the owning process, 0 for a gadget no process holds.
	OwnerPID uint32        `json:"ownerPID,omitempty"`
	Totals   MessageTotals `json:"totals"`
}

// EventMessage is published on <prefix>.<node>._events for every program
// load and release, as it arrives.
type EventMessage struct {
	Schema string `json:"schema"`
	Type   string `json:"type"`
	Node   string `json:"node"`
	state.Event
}

// MaxTokenLen is the longest node or gadget subject token used as is;
// longer ones become a hash token (see NodeToken).
const MaxTokenLen = 64

// MaxLabelLen caps every label value in messages (gadget ID, name and
// image, comm, exe, program name), in bytes: see CleanLabel.
const MaxLabelLen = 128

// maxPrefixLen caps the subject prefix so that subjects stay far below the
// server's control line limit (4096 bytes by default).
const maxPrefixLen = 256

// NodeToken makes a node name one subject token: '.' becomes '_'
// (web1.example.com is web1_example_com); a name that is then longer than
// MaxTokenLen or has a character outside [A-Za-z0-9_-] becomes its
// hashToken. An empty name is "_".
func NodeToken(name string) string {
	if name == "" {
		return "_"
	}
	if tok := strings.ReplaceAll(name, ".", "_"); plainToken(tok) {
		return tok
	}
	return hashToken(name)
}

// gadgetToken is the subject token of a gadget ID: the ID itself when it
// is plain (see plainToken), else its hashToken; a plain ID starting with
// '_' gets a 'g' in front so that no ID can be a reserved token.
func gadgetToken(id string) string {
	if !plainToken(id) {
		return hashToken(id)
	}
	if strings.HasPrefix(id, "_") {
		return "g" + id
	}
	return id
}

// plainToken tells whether tok is a non-empty token of at most MaxTokenLen
// characters of [A-Za-z0-9_-]: safe as a subject token and as a key-value
// key token.
func plainToken(tok string) bool {
	if tok == "" || len(tok) > MaxTokenLen {
		return false
	}
	for i := 0; i < len(tok); i++ {
		switch c := tok[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// hashToken is the token of a value that cannot be one: 'h' and the first
// 20 hex digits of the value's SHA-256, the same on every node and run.
func hashToken(value string) string {
	sum := sha256.Sum256([]byte(value))
	return "h" + hex.EncodeToString(sum[:10])
}

// CleanLabel makes a label value safe to publish and print: control and
// format characters (escape sequences, newlines, bidirectional overrides)
// and line separators are removed, invalid UTF-8 becomes U+FFFD, and the
// result is cut to at most MaxLabelLen bytes at a character boundary.
// Clean labels come back unchanged, without allocating.
func CleanLabel(s string) string {
	if cleanASCII(s) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp) {
			continue
		}
		if b.Len()+utf8.RuneLen(r) > MaxLabelLen {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// cleanASCII tells whether s is short printable ASCII, which CleanLabel
// keeps as is.
func cleanASCII(s string) bool {
	if len(s) > MaxLabelLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// ValidateSubjectPrefix checks that prefix is one or more literal subject
// tokens, at most 256 bytes in all.
func ValidateSubjectPrefix(prefix string) error {
	if len(prefix) > maxPrefixLen {
		return fmt.Errorf("invalid subject prefix: %d bytes, want at most %d", len(prefix), maxPrefixLen)
	}
	for _, tok := range strings.Split(prefix, ".") {
		if tok == "" || strings.ContainsFunc(tok, func(r rune) bool {
			return r == '*' || r == '>' || unicode.IsSpace(r) || unicode.IsControl(r)
		}) {
			return fmt.Errorf("invalid subject prefix %q: want dot-separated tokens without '*', '>' or whitespace", prefix)
		}
	}
	return nil
}
