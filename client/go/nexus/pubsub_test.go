// SPDX-License-Identifier: Apache-2.0

package nexus_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"nexus/client/go/nexus"
)

// Emitted events, fire-and-forget and acknowledged, reach a subscriber of another connection
// in campaign order with their payload, metadata and entity intact.
func TestEmitSubscribeRoundTrip(t *testing.T) {
	camp := campaign()
	sub := dial(t, "")
	pub := dial(t, "")
	s, err := sub.Subscribe(bounded(t, wait), camp, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := bounded(t, wait)
	for i := 1; i <= 5; i++ {
		ev := &nexus.EventRequest{
			EventType:  "order:placed:v1:completed",
			CampaignId: camp,
			EntityId:   fmt.Sprintf("order-%d", i),
			Payload:    payload(t, map[string]any{"n": i, "sku": "tea"}),
			Metadata:   &nexus.Metadata{GlobalContext: &nexus.GlobalContext{UserId: "alice"}},
		}
		if i%2 == 0 {
			if err := pub.Emit(ctx, ev); err != nil {
				t.Fatal(err)
			}
			continue
		}
		ack, err := pub.EmitAck(ctx, ev)
		if err != nil {
			t.Fatal(err)
		}
		if ack.Sequence != uint64(i) || ack.Message != "accepted" || ack.EventId == "" {
			t.Fatalf("ack %d: sequence %d, message %q, id %q", i, ack.Sequence, ack.Message, ack.EventId)
		}
	}
	for i := 1; i <= 5; i++ {
		ev := next(t, s.Events())
		if ev.Sequence != uint64(i) || ev.CampaignId != camp || ev.EventType != "order:placed:v1:completed" {
			t.Fatalf("event %d: %s campaign %d sequence %d", i, ev.EventType, ev.CampaignId, ev.Sequence)
		}
		if ev.EntityId != fmt.Sprintf("order-%d", i) || nexus.UserID(ev) != "alice" {
			t.Fatalf("event %d: entity %q user %q", i, ev.EntityId, nexus.UserID(ev))
		}
		if d := nexus.Data(ev); d["n"] != float64(i) || d["sku"] != "tea" {
			t.Fatalf("event %d: data %v", i, d)
		}
		if ev.EventId == "" || ev.TimestampUnixNanos == 0 {
			t.Fatalf("event %d: id %q, timestamp %d", i, ev.EventId, ev.TimestampUnixNanos)
		}
	}
	quiet(t, s.Events(), 100*time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-s.Events(); ok {
		t.Fatal("events after Close")
	}
	if !errors.Is(s.Err(), nexus.ErrClosed) {
		t.Fatalf("Err after Close: %v", s.Err())
	}
}

// An acknowledged emit carries the assigned id and sequence; the same id again within the
// window is a duplicate; a bad type is refused with its code, on the call (acked) or through
// the error handler (fire-and-forget), and the connection stays usable.
func TestEmitAck(t *testing.T) {
	camp := campaign()
	errs := make(chan error, 4)
	c := dial(t, "", nexus.WithErrorHandler(func(err error) { errs <- err }))
	ctx := bounded(t, wait)
	ev := &nexus.EventRequest{EventType: "doc:saved:v1:completed", CampaignId: camp, EventId: "doc-1"}
	ack, err := c.EmitAck(ctx, ev)
	if err != nil || ack.EventId != "doc-1" || ack.Sequence != 1 || !ack.Success ||
		ack.EventType != ev.EventType || ack.CampaignId != camp {
		t.Fatalf("ack %v, %v", ack, err)
	}
	ack, err = c.EmitAck(ctx, ev)
	if !errors.Is(err, nexus.ErrDuplicate) || ack.Message != "duplicate" || ack.Sequence != 0 {
		t.Fatalf("second emit of doc-1: %v, %v", ack, err)
	}
	ack, err = c.EmitAck(ctx, &nexus.EventRequest{EventType: "doc:saved:v1:completed", CampaignId: camp})
	if err != nil || ack.Sequence != 2 || len(ack.EventId) != 36 {
		t.Fatalf("an emit without id: %v, %v", ack, err)
	}

	_, err = c.EmitAck(ctx, &nexus.EventRequest{EventType: "Doc:saved:v1:completed", CampaignId: camp})
	var e *nexus.Error
	if !errors.As(err, &e) || !errors.Is(err, nexus.ErrInvalidEventType) || e.Message == "" {
		t.Fatalf("bad type, acked: %v", err)
	}
	if err := c.Emit(ctx, &nexus.EventRequest{EventType: "doc:saved:v1", CampaignId: camp}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, nexus.ErrInvalidEventType) {
			t.Fatalf("bad type, fire-and-forget: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("no error for a fire-and-forget emit of a bad type")
	}
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	ack, err = c.EmitAck(ctx, &nexus.EventRequest{EventType: "doc:saved:v1:completed", CampaignId: camp})
	if err != nil || ack.Sequence != 3 {
		t.Fatalf("after the refusals: %v, %v", ack, err)
	}
}

// Patterns select by segment; several subscriptions of one connection each get what they
// match (the broker delivers an event once per connection, the client fans it out); a user
// filter and the firehose (campaign 0) work; a bad pattern is refused.
func TestPatternSubscription(t *testing.T) {
	camp := campaign()
	c := dial(t, "")
	pub := dial(t, "")
	ctx := bounded(t, wait)
	orders, err := c.Subscribe(ctx, camp, []string{"order:*:v1:*"})
	if err != nil {
		t.Fatal(err)
	}
	success, err := c.Subscribe(ctx, camp, []string{"*:*:*:success", "cart:emptied:v2:completed"})
	if err != nil {
		t.Fatal(err)
	}
	bob, err := c.Subscribe(ctx, camp, []string{"*"}, nexus.UserFilter("bob"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var fire []string
	fh, err := c.SubscribeFunc(ctx, 0, []string{"order:*:*:*"}, func(ev *nexus.EventResponse) {
		if ev.CampaignId == camp {
			mu.Lock()
			fire = append(fire, ev.EventType)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	types := []string{
		"order:placed:v1:completed",   // orders, firehose
		"order:placed:v2:completed",   // firehose
		"payment:charge:v1:success",   // success
		"order:paid:v1:success",       // orders, success, firehose
		"cart:emptied:v2:completed",   // success
		"cart:emptied:v1:completed",   // nobody
		"order:shipped:v1:cancelled",  // orders, firehose
		"shipping:label:v1:completed", // nobody (bob's, below, aside)
	}
	for i, typ := range types {
		ev := &nexus.EventRequest{EventType: typ, CampaignId: camp}
		if i == 2 || i == 7 {
			ev.Metadata = &nexus.Metadata{GlobalContext: &nexus.GlobalContext{UserId: "bob"}}
		}
		if _, err := pub.EmitAck(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(s *nexus.Subscription, want ...string) {
		t.Helper()
		for _, w := range want {
			if ev := next(t, s.Events()); ev.EventType != w {
				t.Fatalf("got %s, want %s", ev.EventType, w)
			}
		}
		quiet(t, s.Events(), 50*time.Millisecond)
	}
	expect(orders, types[0], types[3], types[6])
	expect(success, types[2], types[3], types[4])
	expect(bob, types[2], types[7])
	deadline := time.Now().Add(wait)
	for {
		mu.Lock()
		got := fmt.Sprint(fire)
		mu.Unlock()
		want := fmt.Sprint([]string{types[0], types[1], types[3], types[6]})
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("firehose: %s, want %s", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}

	_, err = c.Subscribe(ctx, camp, []string{"order:placed"})
	if !errors.Is(err, nexus.ErrInvalidPattern) {
		t.Fatalf("bad pattern: %v", err)
	}
	// A subscription ended by its context: the broker stops sending (nothing after a later
	// emit), the channel closes.
	sctx, cancel := context.WithCancel(ctx)
	tmp, err := c.Subscribe(sctx, camp, []string{"tmp:*:*:*"})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-tmp.Done():
	case <-time.After(wait):
		t.Fatal("the subscription outlived its context")
	}
	if !errors.Is(tmp.Err(), context.Canceled) {
		t.Fatalf("Err: %v", tmp.Err())
	}
}

// Unit: the client routes events with the broker's pattern rules.
func TestMatchType(t *testing.T) {
	for _, tc := range []struct {
		p, t string
		want bool
	}{
		{"*", "a:b:v1:success", true},
		{"", "a:b:v1:success", true},
		{"a:*:*:*", "a:b:v1:success", true},
		{"a:b:v1:success", "a:b:v1:success", true},
		{"*:*:*:success", "a:b:v1:failed", false},
		{"a:b:v1:*", "a:b:v12:success", false},
		{"a:b:*", "a:b:v1:success", false},
		{"a:b:v1:success:x", "a:b:v1:success", false},
		{"a:*:*:*", "ab:b:v1:success", false},
	} {
		if got := nexus.MatchType(tc.p, tc.t); got != tc.want {
			t.Errorf("MatchType(%q, %q) = %v", tc.p, tc.t, got)
		}
	}
	base, st, ok := nexus.SplitType("campaign:stream_state:v1:requested")
	if base != "campaign:stream_state:v1" || st != nexus.StateRequested || !ok {
		t.Errorf("SplitType: %q %q %v", base, st, ok)
	}
	if _, _, ok := nexus.SplitType("a:b:v1"); ok {
		t.Error("SplitType of three segments")
	}
	if a := nexus.Action("campaign:stream_state:v1:requested"); a != "campaign:stream_state" {
		t.Errorf("Action: %q", a)
	}
}

// A subscription whose reader falls further behind than its queue holds ends with
// ErrSlowConsumer, after delivering what it queued: no silent loss. The connection and its
// other subscriptions are not affected.
func TestSlowConsumer(t *testing.T) {
	camp := campaign()
	c := dial(t, "", nexus.WithQueueLimit(10))
	ctx := bounded(t, wait)
	slow, err := c.Subscribe(ctx, camp, []string{"bulk:*:*:*"})
	if err != nil {
		t.Fatal(err)
	}
	ok, err := c.Subscribe(ctx, camp, []string{"ping:*:*:*"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		if err := c.Emit(ctx, &nexus.EventRequest{EventType: "bulk:item:v1:completed", CampaignId: camp}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-slow.Done():
	case <-time.After(wait):
		t.Fatal("the slow subscription did not end")
	}
	if !errors.Is(slow.Err(), nexus.ErrSlowConsumer) {
		t.Fatalf("Err: %v", slow.Err())
	}
	n := 0
	for ev := range slow.Events() {
		n++
		if ev.Sequence != uint64(n) {
			t.Fatalf("queued event %d has sequence %d", n, ev.Sequence)
		}
	}
	if n != 10 {
		t.Fatalf("%d queued events delivered, want 10", n)
	}
	if _, err := c.EmitAck(ctx, &nexus.EventRequest{EventType: "ping:x:v1:completed", CampaignId: camp}); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, ok.Events()); ev.EventType != "ping:x:v1:completed" {
		t.Fatalf("the other subscription got %s", ev.EventType)
	}
}
