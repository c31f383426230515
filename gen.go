// Package tracker holds the code generation directives of bpfstats tracker;
// the program is cmd/tracker.
package tracker

// BPF objects are compiled with the pinned clang (clang-19) and committed, so
// that "go build" needs no C toolchain. "make generate" reproduces them byte
// for byte: paths are mapped to "." and DWARF is stripped (BTF is kept).

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -ffile-prefix-map=${BPF2GO_ROOT}=." -target bpfel -output-dir internal/loader -go-package loader tracker bpf/tracker.bpf.c -- -I./bpf
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -ffile-prefix-map=${BPF2GO_ROOT}=." -target bpfel -output-dir examples/trace_open -go-package main -type event traceopen bpf/trace_open.bpf.c -- -I./bpf
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -ffile-prefix-map=${BPF2GO_ROOT}=." -target bpfel -output-dir examples/trace_exec -go-package main -type event traceexec bpf/trace_exec.bpf.c -- -I./bpf
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -ffile-prefix-map=${BPF2GO_ROOT}=." -target bpfel -output-dir internal/loader -go-package loader iter bpf/iter.bpf.c -- -I./bpf
