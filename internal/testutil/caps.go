package testutil

import "golang.org/x/sys/unix"

// HasCapability reports whether the calling thread has capability bit
// (linux/capability.h) in its effective set.
func HasCapability(bit uint) (bool, error) {
	var data [2]unix.CapUserData
	if err := capget(&data); err != nil {
		return false, err
	}
	return data[bit/32].Effective&(1<<(bit%32)) != 0, nil
}

// DropCapability removes capability bits from the calling thread's
// effective set; capabilities are per thread, so the caller locks its
// goroutine to the thread (runtime.LockOSThread) and never unlocks it,
// letting the thread exit with the goroutine.
func DropCapability(bits ...uint) error {
	var data [2]unix.CapUserData
	if err := capget(&data); err != nil {
		return err
	}
	for _, bit := range bits {
		data[bit/32].Effective &^= 1 << (bit % 32)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	return unix.Capset(&hdr, &data[0])
}

// capget reads the calling thread's capability sets.
func capget(data *[2]unix.CapUserData) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	return unix.Capget(&hdr, &data[0])
}
