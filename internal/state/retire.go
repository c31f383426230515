package state

import "time"

// Monotonic accounting. A holder of programs (a gadget, or the unowned
// programs as a whole) reports cumulative run time, run count and recursion
// misses over every program it ever held, so that its cumulative never
// decreases while the holder exists. A program passed from one holder to
// another (its owner exited, a load event named another owner, an unowned
// program got an owner) is split at the last snapshot that counted it: the
// first holder keeps what it reported, the second counts the rest. So no
// run is counted twice and none is lost by hand-overs, and a consumer that
// sums holders with equal labels (the metrics) can keep the last value of
// a holder that went away and add its successors. A released program
// counts in its holder up to the last sweep that read it.

// runStats are the cumulative counters of a program that holders carry
// over when it leaves them.
type runStats struct {
	runtime, runcount, misses uint64
}

// statsOf is what the last sweep read of p.
func statsOf(p *program) runStats {
	return runStats{runtime: p.info.RunTime, runcount: p.info.RunCount, misses: p.info.RecursionMisses}
}

func (s *runStats) add(o runStats) {
	s.runtime += o.runtime
	s.runcount += o.runcount
	s.misses += o.misses
}

// since is s minus base, each counter floored at zero: a kernel counter
// never goes back, but a reset must not wrap around.
func (s runStats) since(base runStats) runStats {
	sub := func(a, b uint64) uint64 {
		if a < b {
			return 0
		}
		return a - b
	}
	return runStats{runtime: sub(s.runtime, base.runtime), runcount: sub(s.runcount, base.runcount), misses: sub(s.misses, base.misses)}
}

// atLeast raises each counter of s to at least the one of floor.
func (s runStats) atLeast(floor runStats) runStats {
	return runStats{runtime: max(s.runtime, floor.runtime), runcount: max(s.runcount, floor.runcount), misses: max(s.misses, floor.misses)}
}

// share is the part of a program its current holder counts.
type share struct {
	// base is what the program had run when it came to its holder; the
	// holder counts only the growth since.
	base runStats
	// reported is what the program had run at the last snapshot that
	// counted it, zero before: a program found at start-up and owned
	// after its first read goes to its owner whole.
	reported runStats
}

// ledger is one holder's accounting across snapshots.
type ledger struct {
	// retired is what programs that left the holder had run in it.
	retired runStats
	// last is the cumulative the previous snapshot reported, at lastAt;
	// reported is false before the holder's first snapshot.
	last     runStats
	lastAt   time.Time
	reported bool
}

// ledgerOf is the ledger of p's current holder.
func (t *Tracker) ledgerOf(p *program) *ledger {
	if p.gadget != nil {
		return &p.gadget.ledger
	}
	return &t.unowned
}

// retire moves what p ran in its current holder up to upTo into that
// holder's retired total and rebases p there, so that a next holder counts
// only what p ran after upTo. The holder's cumulative does not change when
// upTo is what it last counted of p. unown calls it with what the last
// snapshot counted, for every way a program leaves a holder (release,
// removal, owner exit, hand-over, ID reuse); remove calls it first with the
// last read, so that a program gone for good leaves all that was read of
// it to its holder.
func (t *Tracker) retire(p *program, upTo runStats) {
	t.ledgerOf(p).retired.add(upTo.since(p.share.base))
	p.share.base = p.share.base.atLeast(upTo)
}

// liveShare is what p's holder counts of p while p stays.
func liveShare(p *program) runStats {
	return statsOf(p).since(p.share.base)
}

// report fills the cumulative and delta columns of a holder's row from its
// live programs' shares and its retired total, at snapshot time now. The
// deltas are the growth of the cumulative since the holder's previous
// snapshot, over the time between the two; zero on its first snapshot.
func (l *ledger) report(row *Row, live runStats, now time.Time) {
	cum := live
	cum.add(l.retired)
	// Never below what was reported: the sums above cannot shrink unless a
	// kernel counter went back, and a counter must not.
	cum = cum.atLeast(l.last)
	row.Runtime, row.Runcount, row.RecursionMisses = cum.runtime, cum.runcount, cum.misses
	row.RuntimeDelta, row.RuncountDelta, row.CPUPercent = 0, 0, 0
	if l.reported {
		d := cum.since(l.last)
		row.RuntimeDelta, row.RuncountDelta = d.runtime, d.runcount
		if dt := now.Sub(l.lastAt); dt > 0 {
			row.CPUPercent = float64(d.runtime) / float64(dt.Nanoseconds()) * 100
		}
	}
	l.last, l.lastAt, l.reported = cum, now, true
}
