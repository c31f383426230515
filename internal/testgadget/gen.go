package testgadget

// The labelled object is a test fixture; "make generate" rebuilds it with
// the pinned clang like the objects of the root gen.go.

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -ffile-prefix-map=${BPF2GO_ROOT}=." -target bpfel -go-package testgadget labelled ../../bpf/labelled.bpf.c -- -I../../bpf
