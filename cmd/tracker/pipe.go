package main

import (
	"errors"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// maxPipeBytes is the largest pipe buffer fitPipe asks for: a JSON answer
// of about 25000 programs. A larger write fills it and then waits for the
// reader, as any write to a pipe does.
const maxPipeBytes = 16 << 20

// pipeWriter writes to a pipe whose buffer it first grows to hold the
// whole of each write (up to maxPipeBytes). A one-shot writes its answer
// in one write of megabytes; into a pipe of the default 64 KiB that write
// waits for the reader to wake up and drain it once per 64 KiB, about 40
// times at 5000 programs (about a tenth of the one-shot's wall time,
// measured under a Go reader). With room for all of it, the write returns at once
// and the tracker exits while the reader drains the pipe at its pace.
type pipeWriter struct {
	f *os.File
	// size is the pipe's buffer size, as read or last set.
	size int
	// refused is set when the kernel would not grow the buffer any more.
	refused bool
}

// fitPipe returns w as a pipeWriter when it is a pipe (or FIFO), and w
// itself otherwise.
func fitPipe(w io.Writer) io.Writer {
	f, ok := w.(*os.File)
	if !ok {
		return w
	}
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		return w
	}
	size, err := pipeSize(f, unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return w
	}
	return &pipeWriter{f: f, size: size}
}

// Write grows the pipe to hold b when it is smaller, then writes b. A
// pipe that cannot grow is written as it is.
func (p *pipeWriter) Write(b []byte) (int, error) {
	if len(b) > p.size && p.size < maxPipeBytes && !p.refused {
		p.grow(min(len(b), maxPipeBytes))
	}
	return p.f.Write(b)
}

// grow asks for a buffer of want bytes. Above /proc/sys/fs/pipe-max-size
// (1 MiB by default) the kernel wants CAP_SYS_RESOURCE (root has it, a
// systemd unit's capability set may not): then it asks for that maximum.
func (p *pipeWriter) grow(want int) {
	size, err := pipeSize(p.f, unix.F_SETPIPE_SZ, want)
	if errors.Is(err, unix.EPERM) {
		if limit, ok := pipeMaxSize(); ok && limit > p.size && limit < want {
			size, err = pipeSize(p.f, unix.F_SETPIPE_SZ, limit)
		}
	}
	if err != nil {
		p.refused = true
		return
	}
	p.size = size
}

// pipeSize runs fcntl cmd (F_GETPIPE_SZ or F_SETPIPE_SZ with arg) on f and
// returns the pipe's buffer size. Requires Linux 2.6.35.
func pipeSize(f *os.File, cmd, arg int) (int, error) {
	conn, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var size int
	var opErr error
	if err := conn.Control(func(fd uintptr) {
		size, opErr = unix.FcntlInt(fd, cmd, arg)
	}); err != nil {
		return 0, err
	}
	return size, opErr
}

// pipeMaxSize reads /proc/sys/fs/pipe-max-size, the largest buffer a
// process without CAP_SYS_RESOURCE may set.
func pipeMaxSize() (int, bool) {
	data, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	return n, err == nil && n > 0
}
