package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfstats/tracker/internal/testutil"
)

// capSysResource is CAP_SYS_RESOURCE's bit.
const capSysResource = 24

// testPipe returns a pipe, both ends closed at the end of the test.
func testPipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

func TestFitPipeLeavesOtherWritersAlone(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := fitPipe(f); got != io.Writer(f) {
		t.Errorf("fitPipe(regular file) = %T, want the file itself", got)
	}
	var buf bytes.Buffer
	if got := fitPipe(&buf); got != io.Writer(&buf) {
		t.Errorf("fitPipe(*bytes.Buffer) = %T, want it unchanged", got)
	}
}

// TestFitPipeGrows writes more than the default 64 KiB and less than
// pipe-max-size, which needs no capability: the pipe grows to hold all of
// it (so the write need not wait for the reader), and what is read back
// is what was written.
func TestFitPipeGrows(t *testing.T) {
	r, w := testPipe(t)
	pw, ok := fitPipe(w).(*pipeWriter)
	if !ok {
		t.Fatalf("fitPipe(pipe) = %T, want *pipeWriter", fitPipe(w))
	}
	limit, ok := pipeMaxSize()
	if !ok {
		t.Fatal("cannot read /proc/sys/fs/pipe-max-size")
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), min(limit, 512<<10)/16)
	if len(data) <= pw.size {
		t.Fatalf("test data %d bytes fits the pipe's %d already", len(data), pw.size)
	}
	// Read meanwhile, so that a pipe that did not grow fails the size
	// check below rather than blocking the write for good.
	read := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		read <- b
	}()
	if n, err := pw.Write(data); err != nil || n != len(data) {
		t.Fatalf("Write(%d bytes) = %d, %v", len(data), n, err)
	}
	if got, err := pipeSize(w, unix.F_GETPIPE_SZ, 0); err != nil || got < len(data) {
		t.Errorf("pipe size after the write = %d, %v; want >= %d", got, err, len(data))
	}
	w.Close()
	if got := <-read; !bytes.Equal(got, data) {
		t.Errorf("read back %d bytes, want the %d written", len(got), len(data))
	}
}

// TestFitPipeAboveMaxSize asks for more than pipe-max-size: with
// CAP_SYS_RESOURCE the pipe gets it, without it gets pipe-max-size, and
// everything written still arrives in order. It runs once with the test's
// capabilities and once with CAP_SYS_RESOURCE dropped from its thread, so
// the fallback is checked everywhere; the first case is checked where
// root has CAP_SYS_RESOURCE (not in a container that withholds it, as on
// our CI machines, where both runs check the fallback).
func TestFitPipeAboveMaxSize(t *testing.T) {
	limit, ok := pipeMaxSize()
	if !ok {
		t.Fatal("cannot read /proc/sys/fs/pipe-max-size")
	}
	// Both powers of two, as the kernel rounds pipe sizes. Where
	// pipe-max-size is maxPipeBytes or more, the fallback is not needed
	// and both cases get want.
	want := min(2*limit, maxPipeBytes)
	data := bytes.Repeat([]byte("fedcba9876543210"), want/16)
	for _, drop := range []bool{false, true} {
		type result struct {
			capable bool
			size    int
			err     error
			got     []byte
		}
		done := make(chan result)
		r, w := testPipe(t)
		go func() {
			// Never unlocked when the capability is dropped: the thread
			// exits with this goroutine.
			runtime.LockOSThread()
			if !drop {
				defer runtime.UnlockOSThread()
			}
			var res result
			if drop {
				if res.err = testutil.DropCapability(capSysResource); res.err != nil {
					done <- res
					return
				}
			}
			if res.capable, res.err = testutil.HasCapability(capSysResource); res.err != nil {
				done <- res
				return
			}
			pw, ok := fitPipe(w).(*pipeWriter)
			if !ok {
				res.err = os.ErrInvalid
				done <- res
				return
			}
			read := make(chan []byte)
			go func() {
				b, _ := io.ReadAll(r)
				read <- b
			}()
			_, res.err = pw.Write(data)
			res.size = pw.size
			w.Close()
			res.got = <-read
			done <- res
		}()
		res := <-done
		if res.err != nil {
			t.Fatalf("drop CAP_SYS_RESOURCE %v: %v", drop, res.err)
		}
		wantSize := want
		if !res.capable && want > limit {
			wantSize = limit
		}
		if drop && res.capable {
			t.Errorf("CAP_SYS_RESOURCE still effective after dropping it")
		}
		if res.size != wantSize {
			t.Errorf("CAP_SYS_RESOURCE %v: pipe grown to %d, want %d (pipe-max-size %d)", res.capable, res.size, wantSize, limit)
		}
		if !bytes.Equal(res.got, data) {
			t.Errorf("CAP_SYS_RESOURCE %v: read back %d bytes, want the %d written", res.capable, len(res.got), len(data))
		}
	}
}

// TestPrinterFitsPipe prints 2000 programs (about 1 MiB of JSON, 0.3 MiB
// of table) into a pipe: the printer grows it to hold each snapshot's rows
// (up to pipe-max-size without CAP_SYS_RESOURCE), and every row arrives.
func TestPrinterFitsPipe(t *testing.T) {
	snap := goldenSnapshot()
	base := *snap.Programs[1]
	snap.Programs = nil
	for i := range 2000 {
		r := base
		r.ProgID = uint32(10000 + i)
		snap.Programs = append(snap.Programs, &r)
	}
	limit, ok := pipeMaxSize()
	if !ok {
		t.Fatal("cannot read /proc/sys/fs/pipe-max-size")
	}
	for _, format := range []string{"json", "table"} {
		t.Run(format, func(t *testing.T) {
			r, w := testPipe(t)
			o := outputFlags{output: format}
			print, err := o.printer(w, true)
			if err != nil {
				t.Fatal(err)
			}
			read := make(chan []byte)
			go func() {
				b, _ := io.ReadAll(r)
				read <- b
			}()
			if err := print(snap); err != nil {
				t.Fatal(err)
			}
			size, err := pipeSize(w, unix.F_GETPIPE_SZ, 0)
			w.Close()
			out := <-read
			if want := min(len(out)-100, limit); err != nil || size < want {
				t.Errorf("pipe size after printing %d bytes = %d, %v; want >= %d", len(out), size, err, want)
			}
			if format == "table" {
				if lines := bytes.Count(out, []byte("\n")); lines != 2+len(snap.Programs) {
					t.Errorf("table has %d lines, want %d", lines, 2+len(snap.Programs))
				}
				return
			}
			var rows []json.RawMessage
			if err := json.Unmarshal(out, &rows); err != nil || len(rows) != len(snap.Programs) {
				t.Errorf("JSON output: %d rows, %v; want %d", len(rows), err, len(snap.Programs))
			}
		})
	}
}
