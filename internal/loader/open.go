package loader

import (
	"errors"
	"fmt"
	"strings"
)

// SourceSpec describes one event source of the registry (see Sources).
type SourceSpec struct {
	// Name is the --source value, and what the opened Source's Name returns.
	Name string
	// Description says in one line how the source learns of loads and
	// releases.
	Description string
	// Requires says in one line what the source needs of the kernel.
	Requires string
	// open attaches the source.
	open func(SourceOptions) (Source, error)
}

// Sources returns the event sources OpenSource knows, in the order auto
// tries them. Adding a source is one file with its open function and one
// line here (and one row in README.md's "Event sources" table, which a test
// checks).
func Sources() []SourceSpec {
	return []SourceSpec{
		{SourceFentry, "fentry programs on the program load and release paths",
			"Linux 5.8, BTF, trampoline programs allowed (no lockdown)", newFentrySource},
		{SourcePerf, "PERF_RECORD_BPF_EVENT side-band, one dummy perf event per CPU",
			"Linux 5.1, CAP_PERFMON or CAP_SYS_ADMIN", newPerfSource},
		{SourcePoll, "no events: the sweep's audit of the program IDs alone (misses programs shorter-lived than the interval)",
			"Linux 4.13, CAP_SYS_ADMIN", newPollSource},
	}
}

// SourceNames returns the valid --source values: auto first, then the
// sources of Sources in fallback order.
func SourceNames() []string {
	names := []string{SourceAuto}
	for _, s := range Sources() {
		names = append(names, s.Name)
	}
	return names
}

// sourceSpec returns the registry entry called name.
func sourceSpec(name string) (SourceSpec, bool) {
	for _, s := range Sources() {
		if s.Name == name {
			return s, true
		}
	}
	return SourceSpec{}, false
}

// OpenSource opens the event source called name (one of SourceNames()).
// With SourceAuto it tries the sources of Sources in order and returns the
// first that works, logging through opts.Logf why the others were refused;
// the result's Name says which one was chosen. What each source requires
// of the kernel is in its SourceSpec.
func OpenSource(name string, opts SourceOptions) (Source, error) {
	if name == SourceAuto {
		return openFirstSource(opts, Sources())
	}
	spec, ok := sourceSpec(name)
	if !ok {
		return nil, fmt.Errorf("unknown event source %q (valid: %s)", name, strings.Join(SourceNames(), ", "))
	}
	src, err := spec.open(opts)
	if err != nil {
		return nil, fmt.Errorf("opening %s source: %w", name, err)
	}
	return src, nil
}

// openFirstSource returns the first of specs that opens.
func openFirstSource(opts SourceOptions, specs []SourceSpec) (Source, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	warnf := opts.Warnf
	if warnf == nil {
		warnf = logf
	}
	var errs []error
	var names []string
	for _, spec := range specs {
		names = append(names, spec.Name)
		src, err := spec.open(opts)
		if err != nil {
			warnf("event source %s unavailable: %v", spec.Name, err)
			errs = append(errs, fmt.Errorf("%s: %w", spec.Name, err))
			continue
		}
		logf("event source %s chosen", spec.Name)
		return src, nil
	}
	return nil, fmt.Errorf("opening event source: none of %s works: %w",
		strings.Join(names, ", "), errors.Join(errs...))
}
