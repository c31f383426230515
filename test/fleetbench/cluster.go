package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// server is one nats-server process of the cluster.
type server struct {
	name    string
	url     string
	monitor string
	proc    *process
}

// startCluster runs three nats-server processes on loopback with the
// deployed cluster.conf (and its partition mapping), each on free ports,
// and waits until each has routes to the two others.
func startCluster(bin, conf string) ([]*server, error) {
	var ports [3][3]int // client, cluster, monitor
	for i := range ports {
		for j := range ports[i] {
			p, err := freePort()
			if err != nil {
				return nil, err
			}
			ports[i][j] = p
		}
	}
	var servers []*server
	for i, name := range []string{"a", "b", "c"} {
		cmd := exec.Command(bin, "-c", conf, "-m", strconv.Itoa(ports[i][2]))
		cmd.Env = append(os.Environ(), "NATS_NAME="+name, "NATS_HOST=127.0.0.1",
			"NATS_PORT="+strconv.Itoa(ports[i][0]), "NATS_CLUSTER_PORT="+strconv.Itoa(ports[i][1]))
		for j := range 3 {
			cmd.Env = append(cmd.Env, fmt.Sprintf("NATS_ROUTE_%d=nats-route://127.0.0.1:%d", j+1, ports[j][1]))
		}
		p, err := startProcess("nats-server-"+name, cmd, nil)
		if err != nil {
			stopAll(servers)
			return nil, err
		}
		servers = append(servers, &server{name: name, proc: p,
			url:     fmt.Sprintf("nats://127.0.0.1:%d", ports[i][0]),
			monitor: fmt.Sprintf("http://127.0.0.1:%d", ports[i][2])})
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range servers {
		for {
			var routez struct {
				NumRoutes int `json:"num_routes"`
			}
			err := getJSON(s.monitor+"/routez", &routez)
			if err == nil && routez.NumRoutes >= 2 {
				break
			}
			if time.Now().After(deadline) {
				stopAll(servers)
				return nil, fmt.Errorf("nats-server %s: no routes to the others within 30s (%v, %d routes; alive %t: %s)",
					s.name, err, routez.NumRoutes, s.proc.alive(), s.proc.errors())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return servers, nil
}

func stopAll(servers []*server) {
	for _, s := range servers {
		s.proc.stop()
	}
}

// connStats are the client connections' counters of one server's connz.
type connStats struct {
	Name     string `json:"name"`
	InMsgs   int64  `json:"in_msgs"`
	InBytes  int64  `json:"in_bytes"`
	OutMsgs  int64  `json:"out_msgs"`
	OutBytes int64  `json:"out_bytes"`
}

// clientCounters sums, per connection name, the counters of every client
// connection of the cluster.
func clientCounters(servers []*server) (map[string]connStats, error) {
	sums := map[string]connStats{}
	for _, s := range servers {
		var connz struct {
			Connections []connStats `json:"connections"`
		}
		if err := getJSON(s.monitor+"/connz?limit=100000", &connz); err != nil {
			return nil, err
		}
		for _, c := range connz.Connections {
			name := strings.Fields(c.Name + " ?")[0]
			t := sums[name]
			t.InMsgs += c.InMsgs
			t.InBytes += c.InBytes
			t.OutMsgs += c.OutMsgs
			t.OutBytes += c.OutBytes
			sums[name] = t
		}
	}
	return sums, nil
}

func getJSON(url string, v any) error {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(bufio.NewReader(resp.Body)).Decode(v)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// pdeathsig kills a child when the harness dies.
var pdeathsig = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
