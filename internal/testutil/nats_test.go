package testutil

import (
	"testing"

	"github.com/nats-io/nats.go"
)

// A standalone nats-server runs with the defaults users get: a 1 MiB
// max_payload, and it comes back on the same port after a restart.
func TestStandaloneNATSDefaults(t *testing.T) {
	s := StartStandaloneNATS(t)
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	if got := nc.MaxPayload(); got != 1<<20 {
		t.Fatalf("max_payload %d, want the default %d", got, 1<<20)
	}
	nc.Close()
	s.Stop()
	s.Stop()
	s.Start()
	sub := Subscribe(t, s.URL, "x.>")
	if err := sub.Conn.Publish("x.y", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if m := sub.Next(t, "x.y", nil); string(m.Data) != "1" {
		t.Fatalf("got %q", m.Data)
	}
}
