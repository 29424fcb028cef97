// SPDX-License-Identifier: Apache-2.0

package nexus_test

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"nexus/client/go/nexus"
	"nexus/client/go/nexustest"
)

// The tests and examples of this package share one nexusd, started here with the test:*
// built-in handlers (echo, fail, stream_ticks); its address is in $NEXUS_BROKER, where
// Dial(ctx, "") finds it. Tests that need other flags (accounts, TLS, a data directory, a
// restart) start their own. Each test uses campaigns of its own (campaign()).
func TestMain(m *testing.M) {
	os.Exit(nexustest.Main(m, "--test-handlers"))
}

// wait bounds every wait for something the broker must send: generous, for an ASan nexusd
// on a loaded CI machine.
const wait = 10 * time.Second

var campaigns atomic.Int64

// Above the small fixed ids the examples use, and apart between runs of one broker.
func init() { campaigns.Store(1_000_000 + time.Now().Unix()%100000*1000) }

// campaign returns a campaign id no other test uses.
func campaign() int64 { return campaigns.Add(1) }

// bounded returns a context that ends after d (and with the test).
func bounded(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// dial connects to addr ("" for the shared broker) and closes the client with the test.
func dial(t *testing.T, addr string, opts ...nexus.Option) *nexus.Client {
	t.Helper()
	c, err := nexus.Dial(bounded(t, wait), addr, opts...)
	if err != nil {
		t.Fatalf("Dial(%q): %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// next returns the next event of ch, failing the test when none comes in time.
func next(t *testing.T, ch <-chan *nexus.EventResponse) *nexus.EventResponse {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("the subscription ended")
		}
		return ev
	case <-time.After(wait):
		t.Fatal("no event in time")
		return nil
	}
}

// quiet fails the test when ch delivers an event within d.
func quiet(t *testing.T, ch <-chan *nexus.EventResponse, d time.Duration) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if ok {
			t.Fatalf("unexpected event %s (sequence %d)", ev.EventType, ev.Sequence)
		}
	case <-time.After(d):
	}
}

// nextUpdate returns the next lifecycle update of a request.
func nextUpdate(t *testing.T, call *nexus.Call) nexus.Update {
	t.Helper()
	select {
	case u, ok := <-call.Updates():
		if !ok {
			_, err := call.Wait()
			t.Fatalf("request %s: updates closed (%v)", call.ID, err)
		}
		return u
	case <-time.After(wait):
		t.Fatalf("request %s: no update in time", call.ID)
		return nil
	}
}

func payload(t *testing.T, m map[string]any) *nexus.Payload {
	t.Helper()
	p, err := nexus.NewPayload(m)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
