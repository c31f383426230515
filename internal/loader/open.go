package loader

import (
	"errors"
	"fmt"
	"strings"
)

// OpenSource opens the event source called name (one of SourceNames()). With
// SourceAuto it tries fentry, then perf, then poll, and returns the first
// that works, logging through opts.Logf why the others were refused; the
// result's Name says which one was chosen.
//
// fentry requires Linux 5.5 and a kernel that lets trampoline programs load,
// perf requires Linux 5.1 and CAP_PERFMON, poll requires Linux 4.13.
func OpenSource(name string, opts SourceOptions) (Source, error) {
	switch name {
	case SourceFentry, SourcePerf, SourcePoll:
		src, err := openNamedSource(name, opts)
		if err != nil {
			return nil, fmt.Errorf("opening %s source: %w", name, err)
		}
		return src, nil
	case SourceAuto:
		return openFirstSource(opts, SourceFentry, SourcePerf, SourcePoll)
	}
	return nil, fmt.Errorf("unknown event source %q (valid: %s)", name, strings.Join(SourceNames(), ", "))
}

// openFirstSource returns the first of names that opens.
func openFirstSource(opts SourceOptions, names ...string) (Source, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	warnf := opts.Warnf
	if warnf == nil {
		warnf = logf
	}
	var errs []error
	for _, name := range names {
		src, err := openNamedSource(name, opts)
		if err != nil {
			warnf("event source %s unavailable: %v", name, err)
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		logf("event source %s chosen", name)
		return src, nil
	}
	return nil, fmt.Errorf("opening event source: none of %s works: %w",
		strings.Join(names, ", "), errors.Join(errs...))
}

func openNamedSource(name string, opts SourceOptions) (Source, error) {
	switch name {
	case SourceFentry:
		return newFentrySource(opts)
	case SourcePerf:
		return newPerfSource(opts)
	case SourcePoll:
		return newPollSource(opts)
	}
	return nil, fmt.Errorf("unknown event source %q", name)
}
