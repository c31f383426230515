// Package sdnotify tells systemd about a service's state with the sd_notify datagram protocol.
//
// The protocol (sd_notify(3)): the service manager passes the path of a
// datagram socket in $NOTIFY_SOCKET; the service sends newline-separated
// VARIABLE=value assignments to it, one datagram per notification. A path
// starting with "@" names a socket in the abstract namespace. Outside
// systemd $NOTIFY_SOCKET is unset and every call is a successful no-op.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// EnvSocket is the environment variable holding the notify socket's address.
const EnvSocket = "NOTIFY_SOCKET"

// States understood by systemd (see sd_notify(3)).
const (
	// StateReady: start-up is finished (Type=notify units become active).
	StateReady = "READY=1"
	// StateStopping: the service is shutting down.
	StateStopping = "STOPPING=1"
)

// ErrUnsupportedSocket is returned for a $NOTIFY_SOCKET that is neither a
// file system path nor an abstract socket name (for example "vsock:…",
// which systemd uses for virtual machines).
var ErrUnsupportedSocket = errors.New("unsupported notify socket address")

// Notify sends state to the socket named by $NOTIFY_SOCKET. It reports
// false and no error when the variable is unset (not started by systemd,
// or not Type=notify).
func Notify(state string) (bool, error) {
	return NotifySocket(os.Getenv(EnvSocket), state)
}

// NotifySocket sends state to the notify socket at addr: an absolute path,
// or "@name" for the abstract namespace. An empty addr sends nothing and
// reports false.
func NotifySocket(addr, state string) (bool, error) {
	if addr == "" {
		return false, nil
	}
	if addr[0] != '/' && addr[0] != '@' {
		return false, fmt.Errorf("notifying %q: %w", addr, ErrUnsupportedSocket)
	}
	// The net package maps a leading "@" to the NUL byte that marks an
	// abstract socket address on Linux.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("connecting to notify socket %s: %w", addr, err)
	}
	defer conn.Close()
	n, err := conn.Write([]byte(state))
	if err != nil {
		return false, fmt.Errorf("sending %q to notify socket %s: %w", state, addr, err)
	}
	if n != len(state) {
		return false, fmt.Errorf("sending %q to notify socket %s: short write of %d bytes", state, addr, n)
	}
	return true, nil
}

// Ready tells systemd that start-up is finished. A Type=notify unit stays
// "activating" until then.
func Ready() (bool, error) { return Notify(StateReady) }

// Stopping tells systemd that the service is shutting down.
func Stopping() (bool, error) { return Notify(StateStopping) }
