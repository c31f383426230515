package publish

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/testutil"
	"github.com/nats-io/nats-server/v2/server"
)

// testCA issues certificates into dir.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

func newTestCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, dir: dir}
	ca.write(t, name+".pem", "CERTIFICATE", der)
	return ca
}

func (ca *testCA) write(t *testing.T, name, kind string, der []byte) string {
	t.Helper()
	path := filepath.Join(ca.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue returns the cert and key files of a leaf for 127.0.0.1.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return ca.write(t, name+".pem", "CERTIFICATE", der), ca.write(t, name+"-key.pem", "EC PRIVATE KEY", keyDER)
}

// TestNATSTLSClientCert connects over mutual TLS, and fails at once with a
// CA that did not sign the server's certificate.
func TestNATSTLSClientCert(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir, "ca")
	newTestCA(t, dir, "other-ca")
	srvCert, srvKey := ca.issue(t, "server", x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := ca.issue(t, "client", x509.ExtKeyUsageClientAuth)

	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: srvCert, KeyFile: srvKey, CaFile: filepath.Join(dir, "ca.pem"), Verify: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := testutil.StartNATS(t, &server.Options{TLS: true, TLSVerify: true, TLSConfig: tc, TLSTimeout: 2})
	url := "tls://" + srv.Addr().String()

	log := testutil.NewLogWatch(t).Logger()
	sink := newTestSink(t, url, "node-tls", log, func(o *NATSOptions) {
		o.Conn.TLSCAFile = filepath.Join(dir, "ca.pem")
		o.Conn.TLSCertFile, o.Conn.TLSKeyFile = cliCert, cliKey
	})
	if !sink.Connected() || !sink.conn.Load().nc.TLSRequired() {
		t.Fatalf("connected %v over TLS %v", sink.Connected(), sink.conn.Load().nc.TLSRequired())
	}
	// Plain clients are refused: listen on the sink's own connection.
	sub, err := sink.conn.Load().nc.SubscribeSync("bpfstats.node-tls._node")
	if err != nil {
		t.Fatal(err)
	}
	if err := sink.conn.Load().nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := sink.Publish(testSnapshot("node-tls", "g1", testTime)); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.NextMsg(testutil.Wait); err != nil {
		t.Fatalf("no _node message over TLS: %v", err)
	}

	_, err = NewNATSSink(NATSOptions{
		Conn: ConnOptions{URLs: url, TLSCAFile: filepath.Join(dir, "other-ca.pem"), TLSCertFile: cliCert, TLSKeyFile: cliKey},
		Node: "node-tls",
	})
	if err == nil || !strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("wrong CA: %v, want a certificate error at once", err)
	}
	t.Logf("wrong CA: %v", err)
}
