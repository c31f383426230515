// Command linelimits fails when a Go file of the project (tests and
// generated bindings aside) is over 500 lines or has a function over 80
// lines: the limits that keep each piece readable in one sitting.
package main

import (
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

const (
	maxFileLines = 500
	maxFuncLines = 80
)

func main() {
	root := "."
	if len(os.Args) > 1 {
		root = os.Args[1]
	}
	problems, err := check(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "linelimits:", err)
		os.Exit(2)
	}
	for _, p := range problems {
		fmt.Println(p)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
}

// check returns one line per file or function over its limit below root.
func check(root string) ([]string, error) {
	var problems []string
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") ||
			strings.HasSuffix(path, "_bpfel.go") || strings.HasSuffix(path, "_bpfeb.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return fmt.Errorf("parsing %s: %w", path, err)
		}
		file := fset.File(f.Pos())
		if n := file.LineCount(); n > maxFileLines {
			problems = append(problems, fmt.Sprintf("%s: %d lines (limit %d)", path, n, maxFileLines))
		}
		for _, decl := range f.Decls {
			start, end := fset.Position(decl.Pos()).Line, fset.Position(decl.End()).Line
			if fn, ok := funcName(decl); ok && end-start+1 > maxFuncLines {
				problems = append(problems, fmt.Sprintf("%s:%d: %s is %d lines (limit %d)", path, start, fn, end-start+1, maxFuncLines))
			}
		}
		return nil
	})
	return problems, err
}
