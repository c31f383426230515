package loader

import (
	"testing"
	"time"
)

func TestVMDiag(t *testing.T) {
	requireVM(t)
	measure := func(label string) {
		var tl, tc time.Duration
		for range 200 {
			s := time.Now()
			prog, _ := loadSocketFilter(t, "trk_diag")
			tl += time.Since(s)
			s = time.Now()
			prog.Close()
			tc += time.Since(s)
		}
		t.Logf("%s: load %v/op close %v/op", label, tl/200, tc/200)
	}
	measure("no source")
	src := vmFentry(t)
	measure("load " + src.load.hook.Function + " release " + src.release.hook.Function)
	src.Close()
	quiet := SourceOptions{Logf: func(string, ...any) {}}
	for _, c := range fentryLoadHooks() {
		s, err := openFentry(quiet, []fentryHook{c}, fentryReleaseHooks())
		if err != nil {
			t.Logf("DIAG load %s: %v", c.Function, err)
			continue
		}
		t.Logf("DIAG load %s: fires", c.Function)
		s.Close()
	}
	for _, c := range fentryReleaseHooks() {
		s, err := openFentry(quiet, fentryLoadHooks(), []fentryHook{c})
		if err != nil {
			t.Logf("DIAG release %s: %v", c.Function, err)
			continue
		}
		t.Logf("DIAG release %s: fires", c.Function)
		s.Close()
	}
}
