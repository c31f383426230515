package main

import (
	"bytes"
	"os"
	"strconv"
	"sync"

	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/exepages"
	"github.com/bpfstats/tracker/internal/publish"
	"github.com/bpfstats/tracker/internal/state"
)

// startPagesSink is the daemon's last sink: after the first interval is
// published, start-up is over (the first full read of every program and
// the first encoding of every row were its last parts), and the pages of
// the binary it alone touched can leave the daemon's resident set.
func startPagesSink(log zerolog.Logger) publish.Sink {
	var once sync.Once
	return sinkFunc(func(*state.Snapshot) error {
		once.Do(func() { releaseStartPages(log, "first interval") })
		return nil
	})
}

// releaseStartPages unmaps the pages of the binary that the daemon has
// touched so far (internal/exepages); those it uses again come back from
// the page cache. The daemon does so twice: after loading (package
// initialisation, most of it the embedded NATS server's, and the BPF
// objects) and after its first interval (startPagesSink), so that neither
// start-up's pages nor the first interval's stay counted while the other
// part of start-up grows the heap. At 5000 programs the daemon kept 14 MiB
// of the binary mapped without this, of which it used about 9; its peak
// RSS went from about 32 to about 28 MiB (docs/benchmarks.md).
func releaseStartPages(log zerolog.Logger, after string) {
	before := rssFileBytes()
	mapped, err := exepages.Release()
	if err != nil {
		log.Info().Err(err).Str("after", after).Msg("start-up pages of the binary not released: the RSS keeps them")
		return
	}
	log.Debug().Str("after", after).Uint64("mapped_bytes", mapped).Int64("rss_file_bytes_before", before).
		Int64("rss_file_bytes_after", rssFileBytes()).Msg("released the binary's start-up pages")
}

// rssFileBytes returns the file-backed part of this process's RSS
// (RssFile in /proc/self/status), or -1 when it cannot be read.
func rssFileBytes() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range bytes.Lines(data) {
		if v, ok := bytes.CutPrefix(line, []byte("RssFile:")); ok {
			kb, err := strconv.ParseInt(string(bytes.TrimSuffix(bytes.TrimSpace(v), []byte(" kB"))), 10, 64)
			if err != nil {
				return -1
			}
			return kb << 10
		}
	}
	return -1
}
