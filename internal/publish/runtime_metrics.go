package publish

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// goFamilies are the go_* families client_golang's Go collector exports by
// default, with its names and help texts, so that dashboards built on
// them keep working.
func goFamilies() []expoFamily {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var gc debug.GCStats
	gc.PauseQuantiles = make([]time.Duration, 5)
	debug.ReadGCStats(&gc)
	pauses := expoMetric{bounds: []float64{0, 0.25, 0.5, 0.75, 1}, counts: make([]float64, 5),
		sum: gc.PauseTotal.Seconds(), count: uint64(gc.NumGC)}
	for i, q := range gc.PauseQuantiles {
		pauses.counts[i] = q.Seconds()
	}
	samples := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}, {Name: "/sched/gomaxprocs:threads"}}
	metrics.Read(samples)
	threads, _ := runtime.ThreadCreateProfile(nil)
	info := expoFamily{name: "go_info", help: "Information about the Go environment.", typ: typeGauge}
	info.add(1, "version", runtime.Version())
	fams := []expoFamily{
		{name: "go_gc_duration_seconds", typ: typeSummary, metrics: []expoMetric{pauses},
			help: "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles."},
		gauge("go_gc_gogc_percent", "Heap size target percentage configured by the user, otherwise 100. This value is set by the GOGC environment variable, and the runtime/debug.SetGCPercent function. Sourced from /gc/gogc:percent.", sampleFloat(samples[0])),
		gauge("go_gc_gomemlimit_bytes", "Go runtime memory limit configured by the user, otherwise math.MaxInt64. This value is set by the GOMEMLIMIT environment variable, and the runtime/debug.SetMemoryLimit function. Sourced from /gc/gomemlimit:bytes.", sampleFloat(samples[1])),
		gauge("go_goroutines", "Number of goroutines that currently exist.", float64(runtime.NumGoroutine())),
		info,
		gauge("go_sched_gomaxprocs_threads", "The current runtime.GOMAXPROCS setting, or the number of operating system threads that can execute user-level Go code simultaneously. Sourced from /sched/gomaxprocs:threads.", sampleFloat(samples[2])),
		gauge("go_threads", "Number of OS threads created.", float64(threads)),
		gauge("go_memstats_last_gc_time_seconds", "Number of seconds since 1970 of last garbage collection.", float64(ms.LastGC)/1e9),
	}
	return append(fams, memstatsFamilies(&ms)...)
}

// memstatsFamilies are the go_memstats_* families of ms.
func memstatsFamilies(ms *runtime.MemStats) []expoFamily {
	g := func(name, help string, v uint64) expoFamily { return gauge("go_memstats_"+name, help, float64(v)) }
	c := func(name, help string, v uint64) expoFamily { return counter("go_memstats_"+name, help, float64(v)) }
	return []expoFamily{
		g("alloc_bytes", "Number of bytes allocated in heap and currently in use. Equals to /memory/classes/heap/objects:bytes.", ms.HeapAlloc),
		c("alloc_bytes_total", "Total number of bytes allocated in heap until now, even if released already. Equals to /gc/heap/allocs:bytes.", ms.TotalAlloc),
		g("buck_hash_sys_bytes", "Number of bytes used by the profiling bucket hash table. Equals to /memory/classes/profiling/buckets:bytes.", ms.BuckHashSys),
		c("frees_total", "Total number of heap objects frees. Equals to /gc/heap/frees:objects + /gc/heap/tiny/allocs:objects.", ms.Frees),
		g("gc_sys_bytes", "Number of bytes used for garbage collection system metadata. Equals to /memory/classes/metadata/other:bytes.", ms.GCSys),
		g("heap_alloc_bytes", "Number of heap bytes allocated and currently in use, same as go_memstats_alloc_bytes. Equals to /memory/classes/heap/objects:bytes.", ms.HeapAlloc),
		g("heap_idle_bytes", "Number of heap bytes waiting to be used. Equals to /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.", ms.HeapIdle),
		g("heap_inuse_bytes", "Number of heap bytes that are in use. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes", ms.HeapInuse),
		g("heap_objects", "Number of currently allocated objects. Equals to /gc/heap/objects:objects.", ms.HeapObjects),
		g("heap_released_bytes", "Number of heap bytes released to OS. Equals to /memory/classes/heap/released:bytes.", ms.HeapReleased),
		g("heap_sys_bytes", "Number of heap bytes obtained from system. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes + /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.", ms.HeapSys),
		c("mallocs_total", "Total number of heap objects allocated, both live and gc-ed. Semantically a counter version for go_memstats_heap_objects gauge. Equals to /gc/heap/allocs:objects + /gc/heap/tiny/allocs:objects.", ms.Mallocs),
		g("mcache_inuse_bytes", "Number of bytes in use by mcache structures. Equals to /memory/classes/metadata/mcache/inuse:bytes.", ms.MCacheInuse),
		g("mcache_sys_bytes", "Number of bytes used for mcache structures obtained from system. Equals to /memory/classes/metadata/mcache/inuse:bytes + /memory/classes/metadata/mcache/free:bytes.", ms.MCacheSys),
		g("mspan_inuse_bytes", "Number of bytes in use by mspan structures. Equals to /memory/classes/metadata/mspan/inuse:bytes.", ms.MSpanInuse),
		g("mspan_sys_bytes", "Number of bytes used for mspan structures obtained from system. Equals to /memory/classes/metadata/mspan/inuse:bytes + /memory/classes/metadata/mspan/free:bytes.", ms.MSpanSys),
		g("next_gc_bytes", "Number of heap bytes when next garbage collection will take place. Equals to /gc/heap/goal:bytes.", ms.NextGC),
		g("other_sys_bytes", "Number of bytes used for other system allocations. Equals to /memory/classes/other:bytes.", ms.OtherSys),
		g("stack_inuse_bytes", "Number of bytes obtained from system for stack allocator in non-CGO environments. Equals to /memory/classes/heap/stacks:bytes.", ms.StackInuse),
		g("stack_sys_bytes", "Number of bytes obtained from system for stack allocator. Equals to /memory/classes/heap/stacks:bytes + /memory/classes/os-stacks:bytes.", ms.StackSys),
		g("sys_bytes", "Number of bytes obtained from system. Equals to /memory/classes/total:byte.", ms.Sys),
	}
}

// sampleFloat is a runtime/metrics sample as a number (0 when the runtime
// does not know it).
func sampleFloat(s metrics.Sample) float64 {
	switch s.Value.Kind() {
	case metrics.KindUint64:
		return float64(s.Value.Uint64())
	case metrics.KindFloat64:
		return s.Value.Float64()
	}
	return 0
}

// userHZ is the unit of the CPU times in /proc/<pid>/stat: USER_HZ, 100
// on every Linux architecture Go supports.
const userHZ = 100

// processFamilies are the process_* families of client_golang's process
// collector, read from /proc/self; a file that cannot be read leaves its
// families out.
func processFamilies() []expoFamily {
	var fams []expoFamily
	if st, err := readSelfStat(); err == nil {
		fams = append(fams,
			counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", float64(st.utime+st.stime)/userHZ),
			gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", float64(st.vsize)),
			gauge("process_resident_memory_bytes", "Resident memory size in bytes.", float64(st.rss*uint64(os.Getpagesize()))))
		if boot, err := bootTime(); err == nil {
			fams = append(fams, gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
				float64(boot)+float64(st.starttime)/userHZ))
		}
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		fams = append(fams, gauge("process_open_fds", "Number of open file descriptors.", float64(len(fds))))
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		fams = append(fams, gauge("process_max_fds", "Maximum number of open file descriptors.", float64(lim.Cur)))
	}
	if syscall.Getrlimit(syscall.RLIMIT_AS, &lim) == nil {
		fams = append(fams, gauge("process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes.", float64(lim.Cur)))
	}
	if rx, tx, err := netDevTotals(); err == nil {
		fams = append(fams,
			counter("process_network_receive_bytes_total", "Number of bytes received by the process over the network.", float64(rx)),
			counter("process_network_transmit_bytes_total", "Number of bytes sent by the process over the network.", float64(tx)))
	}
	return fams
}

// selfStat holds the fields of /proc/self/stat the process metrics use.
type selfStat struct {
	utime, stime, starttime, vsize, rss uint64
}

// readSelfStat reads /proc/self/stat. The fields are counted after the
// command's closing parenthesis: the command itself may hold spaces.
func readSelfStat() (selfStat, error) {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return selfStat{}, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return selfStat{}, strconv.ErrSyntax
	}
	// After ")": state is field 3; utime 14, stime 15, starttime 22,
	// vsize 23, rss 24.
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 22 {
		return selfStat{}, strconv.ErrSyntax
	}
	var st selfStat
	var errs [5]error
	st.utime, errs[0] = strconv.ParseUint(f[11], 10, 64)
	st.stime, errs[1] = strconv.ParseUint(f[12], 10, 64)
	st.starttime, errs[2] = strconv.ParseUint(f[19], 10, 64)
	st.vsize, errs[3] = strconv.ParseUint(f[20], 10, 64)
	st.rss, errs[4] = strconv.ParseUint(f[21], 10, 64)
	for _, err := range errs {
		if err != nil {
			return selfStat{}, err
		}
	}
	return st, nil
}

// bootTime is the btime line of /proc/stat: the boot time in seconds
// since the epoch.
func bootTime() (uint64, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "btime "); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, strconv.ErrSyntax
}

// netDevTotals sums the received and sent bytes of every interface of the
// process's network namespace (/proc/self/net/dev).
func netDevTotals() (rx, tx uint64, err error) {
	data, err := os.ReadFile("/proc/self/net/dev")
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		_, counters, ok := strings.Cut(line, ":")
		f := strings.Fields(counters)
		if !ok || len(f) < 9 {
			continue // the two header lines
		}
		r, rerr := strconv.ParseUint(f[0], 10, 64)
		t, terr := strconv.ParseUint(f[8], 10, 64)
		if rerr != nil || terr != nil {
			return 0, 0, strconv.ErrSyntax
		}
		rx, tx = rx+r, tx+t
	}
	return rx, tx, nil
}
