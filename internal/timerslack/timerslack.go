// Package timerslack sets the timer slack of every thread of this process.
//
// The timer slack of a thread (prctl(2) PR_SET_TIMERSLACK) is how late the
// kernel may fire the timers the thread sleeps on, so that it can wake it
// together with other work. The Go runtime's monitor thread (sysmon) sleeps
// 20 µs at a time during the first millisecond of any burst of work (a
// goroutine running or in a system call), then twice as long each time;
// with the default slack of 50 µs each of those sleeps ends a few tens of
// microseconds later. On the 2-vCPU virtual machine of docs/benchmarks.md
// that was 80 to 110 wakes a second, about a sixth of the CPU of a daemon
// that works about 10 ms every second; with a slack of 1 ms, about 20.
package timerslack

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// ErrPermission is wrapped by Set's error when another thread's slack
// could not be set: that needs CAP_SYS_NICE. The calling thread's slack
// (and so that of the threads it creates from then on) is set anyway.
var ErrPermission = errors.New("setting another thread's timer slack needs CAP_SYS_NICE")

// Current returns the timer slack of the calling thread.
func Current() (time.Duration, error) {
	ns, _, errno := unix.Syscall(unix.SYS_PRCTL, unix.PR_GET_TIMERSLACK, 0, 0)
	if errno != 0 {
		return 0, fmt.Errorf("reading timer slack: %w", errno)
	}
	return time.Duration(ns), nil
}

// Set gives every thread of this process the timer slack d, which must be
// positive. A thread that the runtime creates later inherits the slack of
// the thread that creates it, which then has d. When the calling thread
// already has d, Set assumes the process inherited it (systemd's
// TimerSlackNSec=) and changes nothing.
//
// Requires Linux 4.6 (/proc/<tid>/timerslack_ns) and CAP_SYS_NICE for the
// threads other than the calling one; without it the error wraps
// ErrPermission.
func Set(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("timer slack %v: want a positive duration", d)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if has, err := hasSlack(d); err != nil || has {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(d), 0, 0, 0); err != nil {
		return fmt.Errorf("setting timer slack: %w", err)
	}
	// A thread created while the list is read may have inherited the old
	// slack from a thread not yet set: read the list again until it holds
	// no thread not set.
	self := unix.Gettid()
	done := map[int]bool{self: true}
	value := []byte(strconv.FormatInt(int64(d), 10))
	for range 10 {
		tids, err := threads()
		if err != nil {
			return err
		}
		fresh := 0
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			fresh++
			done[tid] = true
			if err := setThread(tid, value); err != nil {
				return err
			}
		}
		if fresh == 0 {
			return nil
		}
	}
	return errors.New("setting timer slack: threads keep appearing")
}

// capSysNice is CAP_SYS_NICE's number (linux/capability.h).
const capSysNice = 23

// Settable returns nil when Set(d) can give every thread the slack d:
// the calling thread has it already (inherited), or the process has
// CAP_SYS_NICE. Otherwise the error wraps ErrPermission.
func Settable(d time.Duration) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if has, err := hasSlack(d); err != nil || has {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("reading capabilities: %w", err)
	}
	if data[0].Effective&(1<<capSysNice) == 0 {
		return fmt.Errorf("timer slack %v: %w", d, ErrPermission)
	}
	return nil
}

// hasSlack reports whether the calling thread, locked to its goroutine,
// has the slack d.
func hasSlack(d time.Duration) (bool, error) {
	cur, err := Current()
	return cur == d, err
}

// threads lists the IDs of this process's threads.
func threads() ([]int, error) {
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, fmt.Errorf("listing threads: %w", err)
	}
	tids := make([]int, 0, len(entries))
	for _, e := range entries {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// setThread writes the slack of thread tid. A thread that exited
// meanwhile is no error.
func setThread(tid int, value []byte) error {
	path := "/proc/" + strconv.Itoa(tid) + "/timerslack_ns"
	err := os.WriteFile(path, value, 0)
	switch {
	case err == nil, errors.Is(err, os.ErrNotExist), errors.Is(err, unix.ESRCH):
		return nil
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("setting timer slack of thread %d: %w", tid, ErrPermission)
	}
	return fmt.Errorf("setting timer slack of thread %d: %w", tid, err)
}
