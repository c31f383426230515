// SPDX-License-Identifier: GPL-2.0
//
// Gadget labels that travel with the programs: read-only globals named
// bpf_metadata_* (the convention "bpftool prog show" prints as metadata),
// set per instance by the loader before loading. bpfstats tracker reads
// them from each program's .rodata map and names the gadget by them.

#ifndef GADGET_LABELS_H
#define GADGET_LABELS_H

const volatile char bpf_metadata_gadget_id[64] = "";
const volatile char bpf_metadata_gadget_name[64] = "";
const volatile char bpf_metadata_gadget_image[256] = "";

// GADGET_LABELS_USE makes the program it is in use .rodata, so that the
// labels are bound to it at load even if it reads no other variable
// (libbpf binds .rodata to every program instead, right after the load).
// It emits one instruction that loads the address and nothing else.
#define GADGET_LABELS_USE() asm volatile("" : : "r"(bpf_metadata_gadget_id))

#endif
