package state

import (
	"math/bits"
	"slices"
)

// pauseEvery is how many IDs (or bitmap words) a pass of distinctIDs, or
// of another pass of a few nanoseconds per item, handles between two
// calls of its pause function.
const pauseEvery = 4096

// distinctIDs sorts ids and drops repeats, in place, and returns the
// result. A gadget of thousands of programs lists tens of thousands of
// map IDs, which the kernel hands out in sequence: when the IDs span at
// most 64 times their number, a bitmap kept in *scratch does it in linear
// time, in passes that call pause every pauseEvery IDs or words, so that
// a snapshot being built lets events in (see pace.go). Other inputs, and
// fewer IDs than a pass pauses after (which a sort handles in a small
// fraction of a millisecond), are sorted, without pauses.
func distinctIDs(ids []uint32, scratch *[]uint64, pause func()) []uint32 {
	if len(ids) < pauseEvery {
		slices.Sort(ids)
		return slices.Compact(ids)
	}
	lo, hi := ids[0], ids[0]
	for _, id := range ids[1:] {
		lo, hi = min(lo, id), max(hi, id)
	}
	words := (uint64(hi-lo) + 64) / 64
	if words > uint64(len(ids)) {
		slices.Sort(ids)
		return slices.Compact(ids)
	}
	set := *scratch
	if uint64(cap(set)) < words {
		set = make([]uint64, words)
	} else {
		set = set[:words]
		clear(set)
	}
	*scratch = set
	for i, id := range ids {
		off := id - lo
		set[off/64] |= 1 << (off % 64)
		if i%pauseEvery == pauseEvery-1 {
			pause()
		}
	}
	// The distinct IDs are no more than ids, which the bitmap holds now.
	out := ids[:0]
	for w, word := range set {
		for word != 0 {
			out = append(out, lo+uint32(w*64+bits.TrailingZeros64(word)))
			word &= word - 1
		}
		if w%pauseEvery == pauseEvery-1 {
			pause()
		}
	}
	return out
}
