package register

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The registry map's layout. It is part of the API: runners in other
// languages write these bytes (see docs/registration.md), so it never
// changes; a new layout would be a new map at a new path.
const (
	// DefaultPath is where the tracker pins the registry map.
	DefaultPath = "/sys/fs/bpf/bpfstats/registry"
	// MapName is the kernel name of the registry map (at most 15 bytes).
	MapName = "bpfstats_reg"
	// MaxEntries is how many programs the map holds registered at once.
	MaxEntries = 8192
	// KeySize is the size of Key: the program ID (u32, host byte order)
	// then its 8-byte tag.
	KeySize = 12
	// IDSize, NameSize and ImageSize are the sizes of Value's fields: text
	// NUL-padded, or without NUL when it fills the field.
	IDSize    = 64
	NameSize  = 64
	ImageSize = 128
	// ValueSize is the size of Value: ID at byte 0, Name at 64, Image at 128.
	ValueSize = IDSize + NameSize + ImageSize
)

// Gadget is what a registration says about a program: the labels of the
// gadget it belongs to, as the bpf_metadata_gadget_{id,name,image}
// variables would. ID tells gadgets apart; without one, name and image do.
type Gadget struct {
	ID    string
	Name  string
	Image string
}

// Key is the registry map's key: a program ID and the program's tag, so
// that an entry left by a program that is gone never names another
// program that reuses its ID (its tag would have to be equal too).
type Key struct {
	ProgID uint32
	Tag    [8]byte
}

// Value is the registry map's value: the gadget's labels as fixed-size,
// NUL-padded text.
type Value struct {
	ID    [IDSize]byte
	Name  [NameSize]byte
	Image [ImageSize]byte
}

// errNoLabels is returned for a Gadget without any label.
var errNoLabels = errors.New("gadget has no ID, name or image")

// NewValue encodes g. Each field must fit its size (64, 64 and 128 bytes)
// and be printable UTF-8 (no NUL, no control characters), and g must have
// an ID or a name: the tracker would otherwise clean or ignore it.
func NewValue(g Gadget) (Value, error) {
	var v Value
	if g.ID == "" && g.Name == "" {
		return v, errNoLabels
	}
	fields := []struct {
		what string
		text string
		dst  []byte
	}{{"ID", g.ID, v.ID[:]}, {"name", g.Name, v.Name[:]}, {"image", g.Image, v.Image[:]}}
	for _, f := range fields {
		if len(f.text) > len(f.dst) {
			return Value{}, fmt.Errorf("gadget %s is %d bytes, more than %d", f.what, len(f.text), len(f.dst))
		}
		if cleanText([]byte(f.text)) != f.text {
			return Value{}, fmt.Errorf("gadget %s %q: not printable UTF-8", f.what, f.text)
		}
		copy(f.dst, f.text)
	}
	return v, nil
}

// Gadget decodes v as the tracker does: each field up to its first NUL
// (or whole), without invalid UTF-8 and control characters. The map is
// written by other programs: nothing in it is trusted.
func (v *Value) Gadget() Gadget {
	return Gadget{ID: cleanText(v.ID[:]), Name: cleanText(v.Name[:]), Image: cleanText(v.Image[:])}
}

// cleanText is b up to its first NUL, without invalid UTF-8 and without
// control, format and line or paragraph separator characters.
func cleanText(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	var s strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		b = b[n:]
		if r == utf8.RuneError && n <= 1 {
			continue
		}
		if unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp) {
			continue
		}
		s.WriteRune(r)
	}
	return s.String()
}
