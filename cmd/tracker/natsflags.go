package main

import (
	"flag"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/bpfstats/tracker/internal/publish"
)

// natsFlags are the NATS connection flags shared by run and top.
type natsFlags struct {
	url, prefix             string
	creds, nkey, user, pass string
	tlsCA, tlsCert, tlsKey  string
	kv                      bool
}

func (n *natsFlags) register(fs *flag.FlagSet, urlHelp string) {
	fs.StringVar(&n.url, "nats-url", "", urlHelp)
	fs.StringVar(&n.prefix, "subject-prefix", publish.DefaultSubjectPrefix, "first token(s) of every subject")
	fs.StringVar(&n.creds, "nats-creds", "", "NATS credentials (.creds JWT) file")
	fs.StringVar(&n.nkey, "nats-nkey", "", "NATS nkey seed file")
	fs.StringVar(&n.user, "nats-user", "", "NATS user")
	fs.StringVar(&n.pass, "nats-password", "", "NATS password")
	fs.StringVar(&n.tlsCA, "nats-tls-ca", "", "CA file to verify the NATS servers")
	fs.StringVar(&n.tlsCert, "nats-tls-cert", "", "client certificate file for NATS TLS")
	fs.StringVar(&n.tlsKey, "nats-tls-key", "", "client key file for NATS TLS")
	fs.BoolVar(&n.kv, "kv", false, "keep each gadget's latest message in the JetStream key-value bucket \"bpfstats\"")
}

// validate checks the flags that need no network: the URLs and the
// subject prefix.
func (n *natsFlags) validate() error {
	if n.url != "" {
		if _, err := publish.ParseURLs(n.url); err != nil {
			return usageError{fmt.Errorf("--nats-url: %w", err)}
		}
	}
	if err := publish.ValidateSubjectPrefix(n.prefix); err != nil {
		return usageError{fmt.Errorf("--subject-prefix: %w", err)}
	}
	if (n.tlsCert == "") != (n.tlsKey == "") {
		return usagef("--nats-tls-cert and --nats-tls-key go together")
	}
	return nil
}

func (n *natsFlags) conn(url, name string, log zerolog.Logger) publish.ConnOptions {
	return publish.ConnOptions{
		URLs:         url,
		Name:         name,
		CredsFile:    n.creds,
		NKeySeedFile: n.nkey,
		User:         n.user,
		Password:     n.pass,
		TLSCAFile:    n.tlsCA,
		TLSCertFile:  n.tlsCert,
		TLSKeyFile:   n.tlsKey,
		Logger:       log,
	}
}
