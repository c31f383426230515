//go:build ignore

// SPDX-License-Identifier: GPL-2.0
//
// labelled: a test object whose program carries gadget labels in .rodata,
// the bpf_metadata_* convention "bpftool prog show" prints. The loader sets
// them per instance before loading (internal/testgadget).

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "gadget_labels.h"

char LICENSE[] SEC("license") = "GPL";

// An integer metadata variable, which bpftool shows as a number.
const volatile __u32 bpf_metadata_labels_version = 1;

// verdict is what the socket filter returns; reading it makes the program
// use .rodata, so the labels are bound to it at load.
const volatile int verdict = 0;

SEC("socket")
int labelled_prog(struct __sk_buff *skb)
{
	return verdict;
}
