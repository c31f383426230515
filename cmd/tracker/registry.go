package main

import (
	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/loader"
	"github.com/bpfstats/tracker/internal/state"
	"github.com/bpfstats/tracker/pkg/register"
)

// registryUsage is the help of --registry.
const registryUsage = "where runners register programs as gadgets: a BPF map pinned on the bpffs, created when absent " +
	"(docs/registration.md); empty: off"

// defaultRegistry is the default of --registry.
const defaultRegistry = register.DefaultPath

// openRegistry opens the registry at path ("" when off). One that cannot
// be opened (no bpffs, a map of another layout) is logged, and the
// tracker runs without registrations: they are labels, not data.
func openRegistry(path string, log zerolog.Logger) state.Registry {
	if path == "" {
		return nil
	}
	reg, err := loader.OpenRegistry(path)
	if err != nil {
		log.Warn().Err(err).Msg("registry unavailable: programs registered as gadgets are not read")
		return nil
	}
	log.Info().Str("path", path).Msg("reading registrations")
	return reg
}
