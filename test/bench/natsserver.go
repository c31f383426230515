package main

import (
	"bufio"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

// natsServer is a standalone nats-server process at its default settings
// (max_payload 1 MiB, no JetStream), as a user runs it.
type natsServer struct {
	cmd    *exec.Cmd
	url    string
	exited chan struct{}
}

// startNATSServer runs bin on a free loopback port and waits until it
// says it is ready.
func startNATSServer(bin string) (*natsServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting nats-server: %w", err)
	}
	s := &natsServer{cmd: cmd, url: fmt.Sprintf("nats://127.0.0.1:%d", port), exited: make(chan struct{})}
	ready := make(chan struct{})
	var logged strings.Builder
	go func() {
		sc := bufio.NewScanner(stderr)
		said := false
		for sc.Scan() {
			if !said {
				logged.WriteString(sc.Text() + "\n")
				if strings.Contains(sc.Text(), "Server is ready") {
					said = true
					close(ready)
				}
			}
		}
		cmd.Wait()
		close(s.exited)
	}()
	select {
	case <-ready:
		return s, nil
	case <-s.exited:
		return nil, fmt.Errorf("nats-server exited at start-up")
	case <-time.After(20 * time.Second):
		s.stop()
		return nil, fmt.Errorf("nats-server not ready within 20 s")
	}
}

func (s *natsServer) pid() int { return s.cmd.Process.Pid }

func (s *natsServer) stop() {
	s.cmd.Process.Kill()
	<-s.exited
}

// subscriber counts the messages and bytes (subject and payload) published
// under a subject.
type subscriber struct {
	nc          *nats.Conn
	msgs, bytes atomic.Int64
	first       chan struct{}
	firstSeen   atomic.Bool
}

// subscribe connects to url and subscribes to subject, with no limit on
// pending messages so that a slow harness drops nothing.
func subscribe(url, subject string) (*subscriber, error) {
	nc, err := nats.Connect(url, nats.Name("bench subscriber"))
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", url, err)
	}
	s := &subscriber{nc: nc, first: make(chan struct{})}
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		s.msgs.Add(1)
		s.bytes.Add(int64(len(m.Subject) + len(m.Data)))
		if s.firstSeen.CompareAndSwap(false, true) {
			close(s.first)
		}
	})
	if err == nil {
		err = sub.SetPendingLimits(-1, -1)
	}
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("subscribing to %s: %w", subject, err)
	}
	return s, nil
}

// counts returns the messages and bytes received so far.
func (s *subscriber) counts() (int64, int64) { return s.msgs.Load(), s.bytes.Load() }

func (s *subscriber) close() { s.nc.Close() }
