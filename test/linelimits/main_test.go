package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckFindsLongFunctionsAndFiles(t *testing.T) {
	dir := t.TempDir()
	long := "package p\n\nfunc long() {\n" + strings.Repeat("\t_ = 1\n", maxFuncLines) + "}\n\nfunc short() {}\n"
	if err := os.WriteFile(filepath.Join(dir, "a.go"), []byte(long), 0o644); err != nil {
		t.Fatal(err)
	}
	big := "package p\n" + strings.Repeat("\n", maxFileLines)
	for name, src := range map[string]string{"b.go": big, "b_test.go": big, "x_bpfel.go": big} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	problems, err := check(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 2 || !strings.Contains(problems[0], "long is 82 lines") || !strings.Contains(problems[1], "b.go: 501 lines") {
		t.Fatalf("problems %q, want long() and b.go only", problems)
	}
}
