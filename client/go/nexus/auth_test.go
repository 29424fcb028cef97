// SPDX-License-Identifier: Apache-2.0

package nexus_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"nexus/client/go/nexus"
	"nexus/client/go/nexustest"
)

// Credentials against a broker started with --accounts (docs/SECURITY.md): the right token
// logs in, from the options or from $NEXUS_USER/$NEXUS_TOKEN; a wrong or missing one is
// refused with ErrUnauthorized; the broker stamps the account's user id on its events;
// operations the account may not do are refused with ErrPermissionDenied.
func TestCredentials(t *testing.T) {
	const aliceToken, bobToken = "alice-secret-token-0123456789", "bob-secret-token-9876543210"
	accounts := fmt.Sprintf(`# written by auth_test.go
user alice
  token %s
  id alice-id
  publish * *
  request *
  handle gotest:*

user bob
  token %s
  subscribe * *
`, nexustest.HashToken(t, aliceToken), nexustest.HashToken(t, bobToken))
	b := nexustest.Start(t, "--accounts", nexustest.WriteFile(t, "accounts", accounts))
	camp := campaign()
	ctx := bounded(t, 3*wait)

	alice := dial(t, b.Addr, nexus.WithCredentials("alice", aliceToken))
	if w := alice.Welcome(); w == nil || w.ProtocolVersion != nexus.ProtocolVersion {
		t.Fatalf("welcome %v", w)
	}
	t.Setenv("NEXUS_USER", "bob")
	t.Setenv("NEXUS_TOKEN", bobToken)
	bob := dial(t, b.Addr) // from the environment
	s, err := bob.Subscribe(ctx, camp, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.EmitAck(ctx, &nexus.EventRequest{EventType: "note:added:v1:completed", CampaignId: camp}); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, s.Events()); nexus.UserID(ev) != "alice-id" {
		t.Fatalf("the broker stamped %q", nexus.UserID(ev))
	}
	// Impersonation and missing permissions are refused, the connections stay usable.
	_, err = alice.EmitAck(ctx, &nexus.EventRequest{EventType: "note:added:v1:completed", CampaignId: camp,
		Metadata: &nexus.Metadata{GlobalContext: &nexus.GlobalContext{UserId: "bob-id"}}})
	if !errors.Is(err, nexus.ErrPermissionDenied) {
		t.Fatalf("alice emitting as bob: %v", err)
	}
	if _, err := bob.EmitAck(ctx, &nexus.EventRequest{EventType: "note:added:v1:completed", CampaignId: camp}); !errors.Is(err, nexus.ErrPermissionDenied) {
		t.Fatalf("bob emitting without publish: %v", err)
	}
	if _, err := alice.Subscribe(ctx, camp, nil); !errors.Is(err, nexus.ErrPermissionDenied) {
		t.Fatalf("alice subscribing without subscribe: %v", err)
	}
	if err := bob.Handle(ctx, "gotest:x", nexus.Unary(nil)); !errors.Is(err, nexus.ErrPermissionDenied) {
		t.Fatalf("bob registering without handle: %v", err)
	}
	if err := alice.Handle(ctx, "gotest:whoami", nexus.Unary(nil)); err != nil {
		t.Fatalf("alice registering: %v", err)
	}
	if _, err := alice.Ping(ctx); err != nil {
		t.Fatal(err)
	}

	// Refused logins: wrong token, unknown user, none at all. Final: no reconnection loop.
	for _, opt := range []nexus.Option{
		nexus.WithCredentials("alice", bobToken),
		nexus.WithCredentials("carol", aliceToken),
		nexus.WithCredentials("", ""),
	} {
		c, err := nexus.Dial(ctx, b.Addr, opt)
		t.Logf("refused: %v", err)
		if !errors.Is(err, nexus.ErrUnauthorized) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("a refused login: %v", err)
		}
	}
}

// writePEM writes one PEM block of the given type into dir/name and returns the path.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testPKI makes a throwaway CA and two certificates it signs: the broker's (for 127.0.0.1)
// and a client's. Returns the paths of the CA certificate, the server's certificate and key,
// and the client's certificate and key.
func testPKI(t *testing.T) (ca, srvCert, srvKey, cliCert, cliKey string) {
	t.Helper()
	dir := t.TempDir()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nexus go test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, name string) (string, string) {
		k := key()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
			tmpl.DNSNames = []string{"localhost"}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return writePEM(t, dir, name+".crt", "CERTIFICATE", der), writePEM(t, dir, name+".key", "PRIVATE KEY", kder)
	}
	ca = writePEM(t, dir, "ca.crt", "CERTIFICATE", caDER)
	srvCert, srvKey = leaf(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, "server")
	cliCert, cliKey = leaf(3, "go-client", x509.ExtKeyUsageClientAuth, "client")
	return
}

// TLS (--tls-cert, --tls-key, --tls-client-ca): a client that trusts the CA and presents its
// certificate works, from the options or from $NEXUS_TLS_*; plain TCP, an untrusted broker
// and a missing client certificate fail at Dial.
func TestTLS(t *testing.T) {
	ca, srvCert, srvKey, cliCert, cliKey := testPKI(t)
	b := nexustest.Start(t, "--tls-cert", srvCert, "--tls-key", srvKey, "--tls-client-ca", ca)
	ctx := bounded(t, 3*wait)
	camp := campaign()
	c := dial(t, b.Addr, nexus.WithTLSFiles(ca, cliCert, cliKey))
	t.Setenv("NEXUS_TLS_CA", ca)
	t.Setenv("NEXUS_TLS_CERT", cliCert)
	t.Setenv("NEXUS_TLS_KEY", cliKey)
	viaEnv := dial(t, b.Addr)
	s, err := viaEnv.Subscribe(ctx, camp, nil)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]any, 2000) // a payload over several TLS records
	for i := range big {
		big[i] = fmt.Sprintf("item-%04d", i)
	}
	if _, err := c.EmitAck(ctx, &nexus.EventRequest{EventType: "tls:hello:v1:completed", CampaignId: camp,
		Payload: payload(t, map[string]any{"items": big})}); err != nil {
		t.Fatal(err)
	}
	ev := next(t, s.Events())
	if items, _ := nexus.Data(ev)["items"].([]any); len(items) != 2000 || items[1999] != "item-1999" {
		t.Fatalf("over TLS: %d items", len(items))
	}

	t.Setenv("NEXUS_TLS_CA", "")
	t.Setenv("NEXUS_TLS_CERT", "")
	t.Setenv("NEXUS_TLS_KEY", "")
	for name, opts := range map[string][]nexus.Option{
		"plain TCP":               nil,
		"untrusted broker":        {nexus.WithTLSFiles("", cliCert, cliKey)},
		"no client certificate":   {nexus.WithTLSFiles(ca, "", "")},
		"wrong broker name":       {nexus.WithTLSFiles(ca, cliCert, cliKey), nexus.WithTLSServerName("nexus.example")},
		"missing CA file":         {nexus.WithTLSFiles(filepath.Join(t.TempDir(), "none.crt"), "", "")},
		"key without a cert":      {nexus.WithTLSFiles(ca, "", cliKey)},
		"certificate without key": {nexus.WithTLSFiles(ca, cliCert, "")},
	} {
		opts = append(opts, nexus.WithDialTimeout(5*time.Second), nexus.WithoutReconnect())
		c, err := nexus.Dial(ctx, b.Addr, opts...)
		if err == nil {
			c.Close()
			t.Errorf("%s: Dial succeeded", name)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
}
