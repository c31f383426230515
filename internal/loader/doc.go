// Package loader is the tracker's kernel side: its BPF objects and event
// sources, raw bpf(2) reads of programs and maps, and /proc reads.
package loader
