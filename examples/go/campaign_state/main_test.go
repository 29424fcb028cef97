// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"errors"
	"log"
	"os"
	"reflect"
	"sync"
	"testing"
	"time"

	"nexus/client/go/nexus"
	"nexus/client/go/nexustest"
)

// wait bounds every wait for the broker or the handler (generous: ASan, loaded CI).
const wait = 10 * time.Second

// syncBuffer collects the handler's log lines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// start starts nexusd and the handler program's run against it; returns the broker, a
// requester client, and the handler's log.
func start(t *testing.T) (*nexustest.Broker, *nexus.Client, *syncBuffer) {
	t.Helper()
	b := nexustest.Start(t)
	logs := &syncBuffer{}
	ctx, stop := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- run(ctx, b.Addr, log.New(logs, "", 0), func() { close(ready) }) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(wait):
			t.Error("run did not return after its context ended")
		}
		if t.Failed() {
			t.Logf("the handler logged:\n%s", logs.String())
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(wait):
		t.Fatal("the handler did not register in time")
	}
	dctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	req, err := nexus.Dial(dctx, b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { req.Close() })
	return b, req, logs
}

// nextData returns the data of the next stream event of call (heartbeats skipped).
func nextData(t *testing.T, call *nexus.Call) map[string]any {
	t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case u, ok := <-call.Updates():
			if !ok {
				_, err := call.Wait()
				t.Fatalf("%s ended: %v", call.ID, err)
			}
			if s, ok := u.(*nexus.Stream); ok {
				return nexus.Data(s.E)
			}
		case <-timeout:
			t.Fatalf("%s: no stream event in time", call.ID)
		}
	}
}

func update(t *testing.T, c *nexus.Client, action string, campaign int64, data map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	p, err := nexus.NewPayload(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Call(ctx, &nexus.EventRequest{EventType: action, CampaignId: campaign, Payload: p}); err != nil {
		t.Fatalf("%s: %v", action, err)
	}
}

// campaign_ext:stream_state streams a snapshot, then each change to the built-in state as a
// diff with its version, beside the built-in campaign:stream_state (full states); a cancel
// ends it and the handler's context.
func TestStreamState(t *testing.T) {
	_, req, logs := start(t)
	const camp = 42
	ctx, cancel := context.WithTimeout(context.Background(), 3*wait)
	defer cancel()
	builtin, err := req.Request(ctx, &nexus.EventRequest{EventType: "campaign:stream_state:v1", CampaignId: camp})
	if err != nil {
		t.Fatal(err)
	}
	ours, err := req.Request(ctx, &nexus.EventRequest{EventType: ActionStreamState + ":v1", CampaignId: camp})
	if err != nil {
		t.Fatal(err)
	}
	snap := nextData(t, ours)
	if snap["kind"] != "snapshot" || snap["version"] != 0.0 || snap["campaign_id"] != "42" ||
		len(snap["state"].(map[string]any)) != 0 {
		t.Fatalf("snapshot %v", snap)
	}
	if d := nextData(t, builtin); d["version"] != 0.0 {
		t.Fatalf("the built-in's first state %v", d)
	}

	expect := func(want map[string]any) {
		t.Helper()
		got := nextData(t, ours)
		delete(got, "last_updated_ms")
		delete(got, "campaign_id")
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("change\n got %v\nwant %v", got, want)
		}
	}
	update(t, req, "campaign:update:v1", camp, map[string]any{"updates": map[string]any{"theme": "dark", "max_players": 8}})
	expect(map[string]any{"kind": "change", "version": 1.0, "changed": map[string]any{"theme": "dark", "max_players": 8.0}})
	update(t, req, "campaign:feature:v1", camp, map[string]any{"action": "add", "features": []any{"chat", "video"}})
	expect(map[string]any{"kind": "change", "version": 2.0, "features_added": []any{"chat", "video"}})
	update(t, req, "campaign:update:v1", camp, map[string]any{"updates": map[string]any{"theme": nil, "round": 2}})
	expect(map[string]any{"kind": "change", "version": 3.0, "changed": map[string]any{"round": 2.0}, "removed": []any{"theme"}})
	update(t, req, "campaign:feature:v1", camp, map[string]any{"action": "remove", "features": []any{"chat"}})
	expect(map[string]any{"kind": "change", "version": 4.0, "features_removed": []any{"chat"}})

	// The built-in stream reaches the same version (its pushes may be coalesced).
	for {
		if d := nextData(t, builtin); d["version"] == 4.0 {
			break
		}
	}

	// Cancel: the request ends cancelled, the handler's context ends (it logs so).
	cancel()
	if _, err := ours.Wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("after cancel: %v", err)
	}
	deadline := time.Now().Add(wait)
	for !bytes.Contains([]byte(logs.String()), []byte(ours.ID+" after")) {
		if time.Now().After(deadline) {
			t.Fatal("the handler did not end after the cancel")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// campaign_ext:stream_analytics samples the campaign's activity every interval_ms: events by
// state, users, the state's version and keys; a bad interval fails the request with a code.
func TestStreamAnalytics(t *testing.T) {
	_, req, _ := start(t)
	const camp = 43
	ctx, cancel := context.WithTimeout(context.Background(), 3*wait)
	defer cancel()
	p, _ := nexus.NewPayload(map[string]any{"interval_ms": 100})
	call, err := req.Request(ctx, &nexus.EventRequest{EventType: ActionStreamAnalytics + ":v1", CampaignId: camp, Payload: p})
	if err != nil {
		t.Fatal(err)
	}
	first := nextData(t, call)
	if first["sample"] != 1.0 || first["events"] != 0.0 || first["events_per_second"] != 0.0 {
		t.Fatalf("first sample %v", first)
	}
	for i := 0; i < 6; i++ {
		md := &nexus.Metadata{GlobalContext: &nexus.GlobalContext{UserId: []string{"ann", "bo"}[i%2]}}
		if _, err := req.EmitAck(ctx, &nexus.EventRequest{EventType: "demo:click:v1:completed", CampaignId: camp, Metadata: md}); err != nil {
			t.Fatal(err)
		}
	}
	update(t, req, "campaign:update:v1", camp, map[string]any{"updates": map[string]any{"level": 3}})
	// 6 clicks, then the update's requested, started, success and the state broadcast.
	var s map[string]any
	busy := false
	for i := 0; ; i++ {
		s = nextData(t, call)
		if r, _ := s["events_per_second"].(float64); r > 0 {
			busy = true
		}
		if s["events"] == 10.0 && s["state_version"] == 1.0 {
			break
		}
		if i > 100 {
			t.Fatalf("samples never counted the activity: %v", s)
		}
	}
	byState := s["by_state"].(map[string]any)
	if byState["completed"] != 6.0 || byState["success"] != 2.0 || byState["requested"] != 1.0 ||
		s["users"] != 2.0 || s["state_keys"] != 1.0 || !busy {
		t.Fatalf("sample %v (a rate above 0 seen: %v)", s, busy)
	}

	bad, _ := nexus.NewPayload(map[string]any{"interval_ms": 5})
	_, err = req.Call(ctx, &nexus.EventRequest{EventType: ActionStreamAnalytics + ":v1", CampaignId: camp, Payload: bad})
	var re *nexus.RequestError
	if !errors.As(err, &re) || re.Code != "invalid_interval_ms" {
		t.Fatalf("a bad interval: %v", err)
	}
}

// The handler survives a restart of the broker: it registers again and serves.
func TestHandlerAfterRestart(t *testing.T) {
	b, req, _ := start(t)
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := b.Restart(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*wait)
	defer cancel()
	// The requester reconnects too; the handler may need a moment more to register again.
	for {
		call, err := req.Request(ctx, &nexus.EventRequest{EventType: ActionStreamState + ":v1", CampaignId: 44})
		if err != nil {
			t.Fatal(err)
		}
		u, open := <-call.Updates()
		if !open {
			_, err := call.Wait()
			t.Fatalf("after the restart: %v", err)
		}
		if _, ok := u.(*nexus.Started); ok {
			if d := nextData(t, call); d["kind"] != "snapshot" {
				t.Fatalf("after the restart: %v", d)
			}
			return
		}
		if r, ok := u.(*nexus.Result); !ok || r.Code != "no_handler" {
			t.Fatalf("after the restart: %T %v", u, u.Event())
		}
		select {
		case <-ctx.Done():
			t.Fatal("the handler did not come back")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestMain(m *testing.M) {
	nexustest.ClearClientEnv() // the program reads NEXUS_*: only what a test sets counts
	os.Exit(m.Run())
}
