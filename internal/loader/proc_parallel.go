package loader

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// walkChunk is how many fds of one process a worker of the parallel
// walk reads at a time: a process holding thousands (an agent's programs
// and maps) is shared out rather than left to one worker.
const walkChunk = 256

// holdersParallel is procWalker.holders run by workers goroutines, each
// with buffers of its own, sharing out the processes and, by chunks of
// walkChunk, the fds of large ones. A one-shot runs it while it reads
// programs and maps: the walk was its longest chain. Each PID list comes
// out sorted, without repeats.
func holdersParallel(procRoot string, workers int, skip uint32) (map[uint32][]uint32, error) {
	procFd, err := unix.Open(procRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", procRoot, err)
	}
	defer unix.Close(procFd)
	q := &walkQueue{procFd: procFd}
	q.cond.L = &q.mu
	err = eachPID(procFd, make([]byte, 32<<10), skip, func(name []byte, pid uint32) {
		q.procs = append(q.procs, &walkProc{pid: pid, name: slices.Clone(name)})
	})
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", procRoot, err)
	}
	parts := make([]map[uint32][]uint32, max(workers, 1))
	var wg sync.WaitGroup
	for i := range parts {
		parts[i] = make(map[uint32][]uint32)
		wg.Go(func() { q.work(parts[i]) })
	}
	wg.Wait()
	holders := parts[0]
	for _, part := range parts[1:] {
		for id, pids := range part {
			holders[id] = append(holders[id], pids...)
		}
	}
	// Chunks of several processes interleave in a worker's map.
	for id, pids := range holders {
		slices.Sort(pids)
		holders[id] = slices.Compact(pids)
	}
	return holders, nil
}

// walkProc is one process of a parallel walk.
type walkProc struct {
	pid  uint32
	name []byte
	// denied is set once a readlink of its fds was refused: the ptrace
	// access check is the process's, so every other would be too.
	denied atomic.Bool
}

// fdChunk is up to walkChunk fd names of one process, each followed
// by a NUL.
type fdChunk struct {
	proc  *walkProc
	names [][]byte
}

// walkQueue shares a parallel walk's processes, and the chunks of the
// fds of large ones, among its workers.
type walkQueue struct {
	procFd int
	mu     sync.Mutex
	cond   sync.Cond
	procs  []*walkProc
	next   int
	chunks []fdChunk
	// listing counts processes taken whose fds are being listed: until
	// none is, an idle worker waits for chunks.
	listing int
}

// take returns the next chunk, else the next process to list, else false
// once everything was handed out.
func (q *walkQueue) take() (fdChunk, *walkProc, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		if n := len(q.chunks); n > 0 {
			c := q.chunks[n-1]
			q.chunks = q.chunks[:n-1]
			return c, nil, true
		}
		if q.next < len(q.procs) {
			p := q.procs[q.next]
			q.next++
			q.listing++
			return fdChunk{}, p, true
		}
		if q.listing == 0 {
			return fdChunk{}, nil, false
		}
		q.cond.Wait()
	}
}

// listed hands out the chunks of a process whose fds were listed.
func (q *walkQueue) listed(chunks []fdChunk) {
	q.mu.Lock()
	q.chunks = append(q.chunks, chunks...)
	q.listing--
	q.mu.Unlock()
	q.cond.Broadcast()
}

// work runs one worker until the walk is done, adding to holders.
func (q *walkQueue) work(holders map[uint32][]uint32) {
	w := newProcWalker()
	for {
		c, p, ok := q.take()
		if !ok {
			return
		}
		if p != nil {
			chunks := w.listFds(q.procFd, p)
			var mine fdChunk
			if len(chunks) > 0 {
				mine, chunks = chunks[0], chunks[1:]
			}
			q.listed(chunks)
			c = mine
		}
		if c.proc != nil {
			w.scanChunk(q.procFd, c, holders)
		}
	}
}

// listFds returns the fd names of p in chunks of at most walkChunk;
// none when p is gone or denies access.
func (w *procWalker) listFds(procFd int, p *walkProc) []fdChunk {
	w.path = appendPathZ(w.path[:0], p.name, []byte("/fd"))
	fdDir, err := openat(procFd, w.path, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil
	}
	defer unix.Close(fdDir)
	var names [][]byte
	for {
		n, err := unix.Getdents(fdDir, w.fdDents)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			break
		}
		it := direntIter{buf: w.fdDents[:n]}
		for name, ok := it.next(); ok; name, ok = it.next() {
			names = append(names, append(slices.Clip(name), 0))
		}
	}
	var chunks []fdChunk
	for part := range slices.Chunk(names, walkChunk) {
		chunks = append(chunks, fdChunk{proc: p, names: part})
	}
	return chunks
}

// scanChunk adds c's process to holders for each BPF program one of c's
// fds refers to.
func (w *procWalker) scanChunk(procFd int, c fdChunk, holders map[uint32][]uint32) {
	p := c.proc
	w.path = appendPathZ(w.path[:0], p.name, []byte("/fd"))
	fdDir, err := openat(procFd, w.path, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return
	}
	defer unix.Close(fdDir)
	for _, nameZ := range c.names {
		if p.denied.Load() {
			return
		}
		l, err := readlinkat(fdDir, &nameZ[0], w.link)
		if err == unix.EACCES {
			// Refused by the ptrace access check, which is the
			// process's, not the fd's: every other fd would be too
			// (a sandbox's init refused 262 readlinks per walk here).
			p.denied.Store(true)
			return
		}
		if err != nil || string(w.link[:l]) != bpfProgLink {
			continue
		}
		id, ok := w.fdinfoProgID(procFd, p.name, nameZ[:len(nameZ)-1])
		if !ok {
			continue
		}
		pids := holders[id]
		if len(pids) > 0 && pids[len(pids)-1] == p.pid {
			continue // another fd of the same process
		}
		holders[id] = append(pids, p.pid)
	}
}
