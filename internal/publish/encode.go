package publish

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/bpfstats/tracker/internal/state"
)

// defaultMaxPayload is the limit assumed when the server did not say its
// own: a stock nats-server's max_payload.
const defaultMaxPayload = 1 << 20

// DefaultMaxMessageBytes is NATSOptions.MaxMessageBytes's default: a
// quarter of a stock nats-server's max_payload, a few parts an interval
// at thousands of programs.
const DefaultMaxMessageBytes = 256 << 10

// EncodeBuffers are the buffers an interval is encoded into. A sink has
// its own; sinks publishing from one goroutine (the simulator's nodes)
// may share one through NATSOptions.Buffers, so that K nodes do not hold
// K sets of buffers. The zero value is ready to use.
type EncodeBuffers struct {
	mu sync.Mutex
	// enc holds the encoded messages of the interval being published,
	// row the encoded array elements (program rows) of one message that
	// are not kept elsewhere.
	enc, row bytes.Buffer
	// code is where a program row is encoded before it is kept (see
	// keepCode).
	code []byte
	// elems are the array elements of the message being encoded: in
	// row, or kept elsewhere (see intervalEncoder.refer).
	elems [][]byte
}

// intervalEncoder encodes the messages of one interval into the sink's
// buffers, splitting program rows into parts of at most target bytes (a
// row larger than that alone gets a part of up to limit bytes): at
// thousands of programs the _unowned message alone is megabytes, and
// growing fresh buffers each interval dominated the publish.
// nats.Conn.Publish copies the bytes; the key-value writes copy them.
type intervalEncoder struct {
	s *NATSSink
	b *EncodeBuffers
	// limit is the server's max_payload, which no message exceeds;
	// target, at most limit, the size parts are packed to.
	limit, target int
	msgs          []outMsg
	// ext is what the item being encoded referred to, nil if it wrote to
	// the row buffer.
	ext []byte
	// emit, when not nil, takes each message as it is encoded, instead of
	// msgs (see encodeInterval).
	emit func(*outMsg)
	// dropped counts rows and messages that could not fit limit.
	dropped uint64
}

// newIntervalEncoder empties the sink's buffers; messages will be at most
// limit bytes, parts packed to NATSOptions.MaxMessageBytes. The caller
// holds s.mu and s.bufs.mu.
func (s *NATSSink) newIntervalEncoder(n int, limit int64) *intervalEncoder {
	s.bufs.enc.Reset()
	if limit <= 0 {
		limit = defaultMaxPayload
	}
	e := &intervalEncoder{s: s, b: s.bufs, limit: int(min(limit, 1<<30)), msgs: make([]outMsg, 0, n)}
	want := s.opts.MaxMessageBytes
	if want <= 0 {
		want = DefaultMaxMessageBytes
	}
	e.target = min(e.limit, want)
	return e
}

// add encodes v, a message without program rows, for the subject token
// tok (a reserved token or a gadget's token).
func (e *intervalEncoder) add(tok string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s message: %w", tok, err)
	}
	if len(data) > e.limit {
		e.dropped++
		return fmt.Errorf("%s message of %d bytes exceeds the server's max_payload of %d", tok, len(data), e.limit)
	}
	start := e.b.enc.Len()
	e.b.enc.Write(data)
	e.push(tok, 1, 1, start)
	return nil
}

// push makes the sink's buffer from start on the message of part of parts
// of the subject token tok.
func (e *intervalEncoder) push(tok string, part, parts, start int) {
	buf := &e.b.enc
	end := buf.Len()
	m := outMsg{
		subject: e.s.tokenSubject(tok),
		tok:     tok,
		part:    part,
		parts:   parts,
		data:    buf.Bytes()[start:end:end],
	}
	if e.emit != nil {
		e.emit(&m)
		buf.Reset()
		return
	}
	e.msgs = append(e.msgs, m)
}

// itemEncoder encodes element i of a message's array.
type itemEncoder func(enc *json.Encoder, i int) error

// rowItems encodes program rows, whole or as CompactRow.
func rowItems(rows []state.Row, compact bool) itemEncoder {
	return func(enc *json.Encoder, i int) error {
		r := &rows[i]
		if compact {
			return enc.Encode(CompactRow{ProgID: r.ProgID, Totals: r.Totals, Cost: r.Cost})
		}
		return enc.Encode(r)
	}
}

// addArray encodes msg, whose Header is h and whose array field key is
// empty, with n elements encoded by item in that array, for the subject
// token tok: in as many parts as it takes to keep every message within
// limit. Every part is the same message (same seq, same totals) with its
// share of the elements, in order. An element that cannot fit even alone
// is dropped and counted.
func (e *intervalEncoder) addArray(tok string, h *Header, msg any, key string, n int, item itemEncoder) error {
	// The widest envelope: Part and Parts never exceed one per element plus one.
	h.Part, h.Parts = n+1, n+1
	env, _, err := envelope(msg, key)
	if err != nil {
		return fmt.Errorf("encoding %s message: %w", tok, err)
	}
	room, most := e.target-len(env), e.limit-len(env)
	if most < 0 {
		e.dropped++
		return fmt.Errorf("%s message of %d bytes without its %s exceeds the server's max_payload of %d", tok, len(env), key, e.limit)
	}
	if err := e.encodeItems(n, item); err != nil {
		return fmt.Errorf("encoding %s %s: %w", tok, key, err)
	}
	parts := e.packRows(max(room, 0), most)
	h.Parts = len(parts)
	for i, p := range parts {
		h.Part = i + 1
		env, split, err := envelope(msg, key)
		if err != nil {
			return fmt.Errorf("encoding %s message: %w", tok, err)
		}
		buf := &e.b.enc
		start := buf.Len()
		buf.Write(env[:split])
		for j := p.first; j < p.end; j++ {
			if j > p.first {
				buf.WriteByte(',')
			}
			buf.Write(e.b.elems[j])
		}
		buf.Write(env[split:])
		e.push(tok, h.Part, h.Parts, start)
	}
	return nil
}

// envelope encodes msg, whose array field key is empty, and returns where
// the array's elements go: between its brackets. A key with its quotes
// cannot occur inside a JSON string (the quotes would be escaped), so the
// last occurrence is the field.
func envelope(msg any, key string) ([]byte, int, error) {
	env, err := json.Marshal(msg)
	if err != nil {
		return nil, 0, err
	}
	field := `"` + key + `":[]`
	at := bytes.LastIndex(env, []byte(field))
	if at < 0 {
		return nil, 0, fmt.Errorf("message has no empty %s array: %.80s", key, env)
	}
	return env, at + len(field) - 1, nil
}

// refer makes data, which stays unchanged until the message is
// assembled, the element being encoded, instead of bytes written to the
// row buffer: the sink's kept row encodings are not copied twice.
func (e *intervalEncoder) refer(data []byte) { e.ext = data }

// encodeItems encodes n array elements, one after another, into the row
// buffer or as references (see refer).
func (e *intervalEncoder) encodeItems(n int, item itemEncoder) error {
	buf := &e.b.row
	buf.Reset()
	elems := e.b.elems[:0]
	enc := json.NewEncoder(buf)
	for i := 0; i < n; i++ {
		start := buf.Len()
		e.ext = nil
		if err := item(enc, i); err != nil {
			return err
		}
		if e.ext != nil {
			buf.Truncate(start)
			elems = append(elems, e.ext)
			continue
		}
		// Encode ends with a newline that Marshal does not write. The
		// buffer never moves what it holds (it is only written), and a
		// buffer it grew out of stays as it was: the slice stays right.
		buf.Truncate(buf.Len() - 1)
		elems = append(elems, buf.Bytes()[start:buf.Len():buf.Len()])
	}
	e.ext = nil
	e.b.elems = elems
	return nil
}

// rowRange is the rows [first, end) of one part.
type rowRange struct{ first, end int }

// packRows splits the encoded rows into consecutive parts of at most room
// bytes (rows and the commas between them), at least one part. A row
// longer than room is a part by itself; one longer than most (room's
// bound from the server's max_payload) is dropped and counted.
func (e *intervalEncoder) packRows(room, most int) []rowRange {
	kept := e.b.elems[:0]
	for _, el := range e.b.elems {
		if len(el) > most {
			e.dropped++
			continue
		}
		kept = append(kept, el)
	}
	e.b.elems = kept
	parts := []rowRange{{}}
	size := 0
	for i := range kept {
		n := len(kept[i])
		cur := &parts[len(parts)-1]
		if cur.end > cur.first && size+1+n > room {
			parts = append(parts, rowRange{first: i, end: i})
			cur, size = &parts[len(parts)-1], 0
		}
		if cur.end > cur.first {
			size++
		}
		size += n
		cur.end = i + 1
	}
	return parts
}

// cleanRow caps and cleans the labels of a row copy (see CleanLabel),
// copying its slices and loader rather than changing the snapshot's.
func cleanRow(r *state.Row) {
	r.GadgetID = CleanLabel(r.GadgetID)
	r.GadgetName = CleanLabel(r.GadgetName)
	r.GadgetImage = CleanLabel(r.GadgetImage)
	r.ProgName = CleanLabel(r.ProgName)
	r.ProgType = CleanLabel(r.ProgType)
	r.Tag = CleanLabel(r.Tag)
	r.Comms = cleanLabels(r.Comms)
	r.Loader = cleanProcess(r.Loader)
}

// cleanLabels is labels cleaned, labels itself when already clean.
func cleanLabels(labels []string) []string {
	for i, l := range labels {
		if CleanLabel(l) == l {
			continue
		}
		out := make([]string, len(labels))
		copy(out, labels[:i])
		for j := i; j < len(labels); j++ {
			out[j] = CleanLabel(labels[j])
		}
		return out
	}
	return labels
}

// cleanProcess is p with clean labels, p itself when already clean.
func cleanProcess(p *state.ProcessRef) *state.ProcessRef {
	if p == nil {
		return nil
	}
	c := cleanProcessRef(*p)
	if c == *p {
		return p
	}
	return &c
}

func cleanProcessRef(p state.ProcessRef) state.ProcessRef {
	p.Comm, p.Exe = CleanLabel(p.Comm), CleanLabel(p.Exe)
	return p
}

// cleanGadget is g with clean labels.
func cleanGadget(g state.Gadget) state.Gadget {
	g.ID, g.Name, g.Image = CleanLabel(g.ID), CleanLabel(g.Name), CleanLabel(g.Image)
	g.Owner = cleanProcessRef(g.Owner)
	return g
}

// cleanEvent is a copy of ev with clean labels.
func cleanEvent(ev *state.Event) state.Event {
	c := *ev
	c.ProgName, c.ProgType, c.Tag = CleanLabel(c.ProgName), CleanLabel(c.ProgType), CleanLabel(c.Tag)
	c.Loader = cleanProcess(c.Loader)
	if c.Gadget != nil {
		g := cleanGadget(*c.Gadget)
		c.Gadget = &g
	}
	return c
}
