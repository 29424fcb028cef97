// SPDX-License-Identifier: Apache-2.0

package nexus

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// DefaultAddr is the broker's default --listen address, used when Dial gets no address and
// $NEXUS_BROKER is unset.
const DefaultAddr = "127.0.0.1:7400"

// Defaults of the options below, and why.
const (
	// DefaultDialTimeout bounds one connection attempt: TCP, TLS handshake, hello and
	// welcome. The broker's own --auth-timeout-ms is 2 s; the first login of an account costs
	// ~0.1 s of argon2.
	DefaultDialTimeout = 10 * time.Second
	// DefaultBackoffMin and DefaultBackoffMax bound the wait between reconnection attempts:
	// it doubles from the first to the second, with jitter, so that a restarted broker is not
	// met by every client at the same instant.
	DefaultBackoffMin = 100 * time.Millisecond
	DefaultBackoffMax = 5 * time.Second
	// DefaultKeepAlive: when nothing has arrived for this long the client pings; when nothing
	// arrives for twice as long the connection is taken as dead and replaced. Shorter than the
	// broker's own 30 s ping interval, so that a half-open connection is noticed by the side
	// that wants events.
	DefaultKeepAlive = 15 * time.Second
	// DefaultWriteTimeout: a frame that cannot be written for this long (the broker stopped
	// reading: backpressure that does not end, or a dead peer) breaks the connection.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultQueueLimit is how many events a subscription or request holds for a reader
	// that does not keep up, before it is ended with ErrSlowConsumer. 65,536 events of a
	// typical 200 bytes is ~13 MB, the order of the broker's own 16 MiB per connection.
	DefaultQueueLimit = 65536
	// frameBytesMax is the largest frame accepted from the broker before its Welcome says
	// otherwise (its default bound is 1 MiB; 64 MiB leaves room for any configuration).
	frameBytesMax = 64 << 20
)

// Option configures Dial.
type Option func(*options)

type options struct {
	user, token  string
	credsSet     bool
	name         string
	tls          *tls.Config
	tlsFiles     [3]string // ca, cert, key
	tlsSet       bool
	serverName   string
	dialTimeout  time.Duration
	reconnect    bool
	backoffMin   time.Duration
	backoffMax   time.Duration
	keepAlive    time.Duration
	writeTimeout time.Duration
	queueLimit   int
	onError      func(error)
	onState      func(ConnState, error)
}

// ConnState is what WithStateHandler reports.
type ConnState int

const (
	// Connected: a connection is up, subscriptions and handlers restored.
	Connected ConnState = iota
	// Disconnected: the connection broke; the client is reconnecting.
	Disconnected
	// Closed: the client is closed (Close, WithoutReconnect, or a refused login).
	Closed
)

func (s ConnState) String() string {
	switch s {
	case Connected:
		return "connected"
	case Disconnected:
		return "disconnected"
	default:
		return "closed"
	}
}

// WithCredentials logs in as an account of a broker started with --accounts (user and its
// token), or with the shared token of one started with --token (user ""). Without this
// option the client uses $NEXUS_USER and $NEXUS_TOKEN, which keep a token out of the
// process list (docs/SECURITY.md).
func WithCredentials(user, token string) Option {
	return func(o *options) { o.user, o.token, o.credsSet = user, token, true }
}

// WithClientName sets Hello.client_name. The broker's duplicate window is per client name
// (docs/PROTOCOL.md, "Duplicates"): a client that reconnects under the same name and resends
// an emit with the same event id is recognised. Default: "nexus-go-" and a random suffix,
// the same for every connection of one Client.
func WithClientName(name string) Option { return func(o *options) { o.name = name } }

// WithTLS speaks TLS with cfg (cloned; ServerName defaults to the host of the address).
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) { o.tls, o.tlsSet = cfg.Clone(), true }
}

// WithTLSFiles speaks TLS, trusting the CA in caFile (PEM; "" = the system store) and, when
// certFile is not "", presenting that client certificate with keyFile (brokers started with
// --tls-client-ca). Without a TLS option, $NEXUS_TLS_CA, $NEXUS_TLS_CERT and $NEXUS_TLS_KEY
// do the same when one of them is set.
func WithTLSFiles(caFile, certFile, keyFile string) Option {
	return func(o *options) { o.tlsFiles, o.tlsSet, o.tls = [3]string{caFile, certFile, keyFile}, true, nil }
}

// WithTLSServerName sets the name the broker's certificate must carry when it differs from
// the host of the address.
func WithTLSServerName(name string) Option { return func(o *options) { o.serverName = name } }

// WithDialTimeout bounds each connection attempt (default DefaultDialTimeout).
func WithDialTimeout(d time.Duration) Option { return func(o *options) { o.dialTimeout = d } }

// WithReconnect sets the back-off between reconnection attempts (defaults DefaultBackoffMin
// and DefaultBackoffMax).
func WithReconnect(min, max time.Duration) Option {
	return func(o *options) { o.reconnect, o.backoffMin, o.backoffMax = true, min, max }
}

// WithoutReconnect makes a broken connection final: the client closes, and its
// subscriptions end with ErrConnectionLost.
func WithoutReconnect() Option { return func(o *options) { o.reconnect = false } }

// WithKeepAlive sets the silence after which the client pings the broker (default
// DefaultKeepAlive; 0 turns it off).
func WithKeepAlive(d time.Duration) Option { return func(o *options) { o.keepAlive = d } }

// WithQueueLimit sets how many undelivered events one subscription or request may hold
// (default DefaultQueueLimit).
func WithQueueLimit(n int) Option { return func(o *options) { o.queueLimit = n } }

// WithErrorHandler receives errors that belong to no call: error frames answering
// fire-and-forget emits (correlation 0), gaps a subscription has no OnGap for, failed handler
// replies. Called from the client's reader: it must not block. Default: dropped.
func WithErrorHandler(f func(error)) Option { return func(o *options) { o.onError = f } }

// WithStateHandler is called on every change of the connection: Connected (after a restore),
// Disconnected (with the cause) and Closed. It must not block.
func WithStateHandler(f func(ConnState, error)) Option { return func(o *options) { o.onState = f } }

func defaultOptions() options {
	return options{
		name:         "nexus-go-" + newEventID()[:8],
		dialTimeout:  DefaultDialTimeout,
		reconnect:    true,
		backoffMin:   DefaultBackoffMin,
		backoffMax:   DefaultBackoffMax,
		keepAlive:    DefaultKeepAlive,
		writeTimeout: DefaultWriteTimeout,
		queueLimit:   DefaultQueueLimit,
	}
}

// fromEnv fills what the options left unset from the environment, as nexusctl and the
// Python client do.
func (o *options) fromEnv() {
	if !o.credsSet {
		o.user, o.token = os.Getenv("NEXUS_USER"), os.Getenv("NEXUS_TOKEN")
	}
	if !o.tlsSet {
		ca, cert, key := os.Getenv("NEXUS_TLS_CA"), os.Getenv("NEXUS_TLS_CERT"), os.Getenv("NEXUS_TLS_KEY")
		if ca != "" || cert != "" || key != "" {
			o.tlsFiles, o.tlsSet = [3]string{ca, cert, key}, true
		}
	}
	if o.backoffMin <= 0 {
		o.backoffMin = DefaultBackoffMin
	}
	if o.backoffMax < o.backoffMin {
		o.backoffMax = o.backoffMin
	}
	if o.queueLimit <= 0 {
		o.queueLimit = DefaultQueueLimit
	}
}

// tlsConfig returns the TLS configuration for addr, nil for plain TCP.
func (o *options) tlsConfig(addr string) (*tls.Config, error) {
	if !o.tlsSet {
		return nil, nil
	}
	cfg := o.tls
	if cfg == nil {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		ca, cert, key := o.tlsFiles[0], o.tlsFiles[1], o.tlsFiles[2]
		if ca != "" {
			pem, err := os.ReadFile(ca)
			if err != nil {
				return nil, fmt.Errorf("nexus: TLS CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("nexus: TLS CA %s: no PEM certificate in it", ca)
			}
			cfg.RootCAs = pool
		}
		if cert != "" || key != "" {
			if cert == "" {
				return nil, errors.New("nexus: a TLS key without a certificate")
			}
			if key == "" {
				key = cert // one PEM holding both
			}
			pair, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				return nil, fmt.Errorf("nexus: TLS client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
	} else {
		cfg = cfg.Clone()
	}
	if o.serverName != "" {
		cfg.ServerName = o.serverName
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("nexus: address %q: %w", addr, err)
		}
		cfg.ServerName = host
	}
	return cfg, nil
}
