package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// listen opens a fake notify socket at addr, as systemd does.
func listen(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// receive reads one datagram, waiting at most ten seconds.
func receive(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("receiving notification: %v", err)
	}
	return string(buf[:n])
}

func testSocket(t *testing.T, addr string) {
	conn := listen(t, addr)
	t.Setenv(EnvSocket, addr)

	for _, tc := range []struct {
		send func() (bool, error)
		want string
	}{
		{Ready, "READY=1"},
		{Stopping, "STOPPING=1"},
		{func() (bool, error) { return Notify("READY=1\nSTATUS=up") }, "READY=1\nSTATUS=up"},
	} {
		sent, err := tc.send()
		if err != nil || !sent {
			t.Fatalf("sending %q: sent %v, %v", tc.want, sent, err)
		}
		if got := receive(t, conn); got != tc.want {
			t.Errorf("received %q, want %q", got, tc.want)
		}
	}
}

func TestNotifyPath(t *testing.T) {
	testSocket(t, filepath.Join(t.TempDir(), "notify"))
}

func TestNotifyAbstract(t *testing.T) {
	name := fmt.Sprintf("@bpfstats-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	t.Chdir(t.TempDir())
	testSocket(t, name)
	// Abstract sockets have no file: "@" was not taken literally.
	if _, err := os.Lstat(name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file %q exists: %v", name, err)
	}
}

func TestNotifyUnset(t *testing.T) {
	t.Setenv(EnvSocket, "")
	os.Unsetenv(EnvSocket) // t.Setenv restores it afterwards
	sent, err := Ready()
	if sent || err != nil {
		t.Errorf("Ready without %s: sent %v, %v; want false, nil", EnvSocket, sent, err)
	}
}

func TestNotifyErrors(t *testing.T) {
	t.Setenv(EnvSocket, "vsock:2:1234")
	if sent, err := Ready(); sent || !errors.Is(err, ErrUnsupportedSocket) {
		t.Errorf("vsock address: sent %v, %v; want ErrUnsupportedSocket", sent, err)
	}
	t.Setenv(EnvSocket, filepath.Join(t.TempDir(), "absent"))
	if sent, err := Ready(); sent || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("missing socket: sent %v, %v; want ENOENT", sent, err)
	}
}
