package loader

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// iterLoadOptions are the options the iterator objects load with: one
// BTF cache for all of them, so that the kernel's BTF is decoded once,
// and CO-RE relocations resolved against vmlinux alone.
//
// cilium/ebpf (v0.22) decodes vmlinux BTF to find an iterator's attach
// target (bpf_iter_<name>) whatever the options: that part cannot be
// avoided. Without KernelTypes its relocations would also decode the BTF
// of every loaded module as candidate targets, which the iterators (core
// kernel types only) never need; on a distribution kernel with hundreds
// of modules that is most of the cost.
func iterLoadOptions() *ebpf.CollectionOptions {
	cache := btf.NewCache()
	opts := &ebpf.CollectionOptions{Cache: cache}
	if kernel, err := cache.Kernel(); err == nil {
		opts.Programs.KernelTypes = kernel
	}
	return opts
}
