// SPDX-License-Identifier: Apache-2.0

package nexus_test

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"nexus/client/go/nexus"
	"nexus/client/go/nexustest"
)

// expectState waits for the connection state s, skipping others.
func expectState(t *testing.T, ch <-chan nexus.ConnState, s nexus.ConnState) {
	t.Helper()
	deadline := time.After(3 * wait)
	for {
		select {
		case got := <-ch:
			if got == s {
				return
			}
		case <-deadline:
			t.Fatalf("the client did not become %s", s)
		}
	}
}

// The broker restarts: the client notices, reconnects with back-off, subscribes again and
// registers its handler again; what was in flight ends with ErrConnectionLost, and what is
// sent while it is down waits for the new connection.
func TestReconnect(t *testing.T) {
	b := nexustest.Start(t, "--test-handlers")
	states := make(chan nexus.ConnState, 64)
	c := dial(t, b.Addr, nexus.WithReconnect(50*time.Millisecond, 500*time.Millisecond),
		nexus.WithStateHandler(func(s nexus.ConnState, _ error) { states <- s }))
	expectState(t, states, nexus.Connected)
	camp := campaign()
	ctx := bounded(t, 3*wait)
	s, err := c.Subscribe(ctx, camp, []string{"news:*:*:*"})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Handle(ctx, "gotest:hello", nexus.Unary(func(ctx context.Context, ev *nexus.EventResponse) (*nexus.Payload, error) {
		return nexus.NewPayload(map[string]any{"hi": nexus.Data(ev)["name"]})
	}))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := c.Request(ctx, &nexus.EventRequest{EventType: "test:stream_ticks:v1", CampaignId: camp})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := nextUpdate(t, stream).(*nexus.Started); !ok {
		t.Fatal("the stream did not start")
	}

	if err := b.Stop(); err != nil {
		t.Fatalf("nexusd did not drain cleanly: %v", err)
	}
	expectState(t, states, nexus.Disconnected)
	if _, err := stream.Wait(); !errors.Is(err, nexus.ErrConnectionLost) {
		t.Fatalf("the open stream: %v", err)
	}
	if c.Welcome() != nil {
		t.Fatal("a welcome while disconnected")
	}
	// Sent while the broker is down: waits, then goes out on the next connection.
	acked := make(chan error, 1)
	go func() {
		_, err := c.EmitAck(ctx, &nexus.EventRequest{EventType: "news:posted:v1:completed", CampaignId: camp, EventId: "while-down"})
		acked <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if err := b.Restart(); err != nil {
		t.Fatal(err)
	}
	expectState(t, states, nexus.Connected)
	if c.Welcome() == nil {
		t.Fatal("no welcome after the reconnection")
	}
	select {
	case err := <-acked:
		if err != nil {
			t.Fatalf("the emit made while down: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("the emit made while down was not sent")
	}
	if ev := next(t, s.Events()); ev.EventId != "while-down" {
		t.Fatalf("got %s %s", ev.EventType, ev.EventId)
	}

	// Re-subscribed: another client's event arrives; re-registered: its request is served.
	other := dial(t, b.Addr)
	if _, err := other.EmitAck(ctx, &nexus.EventRequest{EventType: "news:posted:v1:completed", CampaignId: camp, EventId: "after"}); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, s.Events()); ev.EventId != "after" {
		t.Fatalf("got %s %s", ev.EventType, ev.EventId)
	}
	r, err := other.Call(ctx, &nexus.EventRequest{EventType: "gotest:hello:v1", CampaignId: camp,
		Payload: payload(t, map[string]any{"name": "again"})})
	if err != nil || nexus.Data(r)["hi"] != "again" {
		t.Fatalf("the handler after the restart: %v, %v", nexus.Data(r), err)
	}

	// A crash (SIGKILL, no goaway) is noticed too.
	b.Kill()
	expectState(t, states, nexus.Disconnected)
	if err := b.Restart(); err != nil {
		t.Fatal(err)
	}
	expectState(t, states, nexus.Connected)
	if _, err := other.EmitAck(ctx, &nexus.EventRequest{EventType: "news:posted:v1:completed", CampaignId: camp, EventId: "after-crash"}); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, s.Events()); ev.EventId != "after-crash" {
		t.Fatalf("got %s %s", ev.EventType, ev.EventId)
	}
}

// Without reconnection a broken connection is final: the subscriptions end and calls fail.
func TestWithoutReconnect(t *testing.T) {
	b := nexustest.Start(t)
	c := dial(t, b.Addr, nexus.WithoutReconnect())
	s, err := c.Subscribe(bounded(t, wait), campaign(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(wait):
		t.Fatal("the subscription outlived the connection")
	}
	if !errors.Is(s.Err(), nexus.ErrConnectionLost) || !errors.Is(c.Err(), nexus.ErrConnectionLost) {
		t.Fatalf("subscription: %v, client: %v", s.Err(), c.Err())
	}
	if _, err := c.Ping(bounded(t, wait)); !errors.Is(err, nexus.ErrConnectionLost) {
		t.Fatalf("Ping after the end: %v", err)
	}
}

// Resume (a broker with --data-dir): a subscription that saw sequences 1..3 before the
// broker restarted gets 4 and 5, emitted before it came back, from the broker's log, then
// the live 6: each once, in order.
func TestResumeAfterRestart(t *testing.T) {
	b := nexustest.Start(t, "--data-dir", t.TempDir())
	camp := campaign()
	ctx := bounded(t, 3*wait)
	// Slow to come back, so that the events below are emitted before it does.
	c := dial(t, b.Addr, nexus.WithReconnect(1500*time.Millisecond, 2*time.Second))
	s, err := c.Subscribe(ctx, camp, []string{"feed:*:*:*"}, nexus.FromSequence(1))
	if err != nil {
		t.Fatal(err)
	}
	// Another subscription of the same connection, without resume: its live events must
	// not move the first one's resume point past what it missed.
	other, err := c.Subscribe(ctx, camp, []string{"*"})
	if err != nil {
		t.Fatal(err)
	}
	emit := func(pub *nexus.Client, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			if _, err := pub.EmitAck(ctx, &nexus.EventRequest{EventType: "feed:item:v1:completed", CampaignId: camp}); err != nil {
				t.Fatal(err)
			}
		}
	}
	expect := func(from, to uint64) {
		t.Helper()
		for seq := from; seq <= to; seq++ {
			if ev := next(t, s.Events()); ev.Sequence != seq {
				t.Fatalf("sequence %d, want %d", ev.Sequence, seq)
			}
		}
	}
	pub := dial(t, b.Addr)
	emit(pub, 3)
	expect(1, 3)
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := b.Restart(); err != nil {
		t.Fatal(err)
	}
	emit(dial(t, b.Addr), 2)
	expect(4, 5)
	emit(dial(t, b.Addr), 1)
	expect(6, 6)
	quiet(t, s.Events(), 200*time.Millisecond)
	if s.LastSequence() != 6 {
		t.Fatalf("LastSequence %d", s.LastSequence())
	}
	// The plain one got 1..3, then live events only (4 and 5 too if the client was back
	// before they were emitted), up to 6.
	for want := uint64(1); want != 7; {
		ev := next(t, other.Events())
		if ev.Sequence < want || (want <= 3 && ev.Sequence != want) {
			t.Fatalf("the plain subscription: sequence %d, expected %d", ev.Sequence, want)
		}
		want = ev.Sequence + 1
	}
}

// from_sequence on a broker without a log is refused.
func TestFromSequenceWithoutLog(t *testing.T) {
	c := dial(t, "")
	_, err := c.Subscribe(bounded(t, wait), campaign(), nil, nexus.FromSequence(1))
	if !errors.Is(err, nexus.ErrBadRequest) {
		t.Fatalf("from_sequence without --data-dir: %v", err)
	}
}

// Liveness both ways: the client answers the broker's pings (a subscriber that only reads
// keeps its connection), and notices a broker that stopped answering (frozen with SIGSTOP)
// within twice its keep-alive, then reconnects when it answers again.
func TestKeepAlive(t *testing.T) {
	b := nexustest.Start(t, "--ping-interval-ms", "100", "--ping-misses", "2")
	states := make(chan nexus.ConnState, 64)
	c := dial(t, b.Addr, nexus.WithKeepAlive(300*time.Millisecond),
		nexus.WithReconnect(50*time.Millisecond, 200*time.Millisecond),
		nexus.WithStateHandler(func(s nexus.ConnState, _ error) { states <- s }))
	expectState(t, states, nexus.Connected)
	camp := campaign()
	s, err := c.Subscribe(bounded(t, wait), camp, nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(800 * time.Millisecond) // eight broker pings; unanswered, two would close it
	select {
	case st := <-states:
		t.Fatalf("the idle subscriber's connection went %s", st)
	default:
	}
	pub := dial(t, b.Addr)
	if _, err := pub.EmitAck(bounded(t, wait), &nexus.EventRequest{EventType: "tick:tock:v1:completed", CampaignId: camp}); err != nil {
		t.Fatal(err)
	}
	next(t, s.Events())

	if err := b.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	expectState(t, states, nexus.Disconnected)
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("a frozen broker noticed after %v (keep-alive 300 ms)", d)
	}
	if err := b.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	expectState(t, states, nexus.Connected)
	if _, err := c.Ping(bounded(t, wait)); err != nil {
		t.Fatal(err)
	}
}

// A frame larger than the broker accepts is refused by the client, before it would cost the
// connection.
func TestFrameTooLarge(t *testing.T) {
	b := nexustest.Start(t, "--max-frame-bytes", "64K")
	c := dial(t, b.Addr, nexus.WithoutReconnect())
	if w := c.Welcome(); w.MaxFrameBytes != 64<<10 {
		t.Fatalf("welcome says %d", w.MaxFrameBytes)
	}
	big := make([]byte, 70<<10)
	for i := range big {
		big[i] = 'x'
	}
	ev := &nexus.EventRequest{EventType: "blob:put:v1:completed", CampaignId: campaign(),
		Payload: payload(t, map[string]any{"blob": string(big)})}
	ctx := bounded(t, wait)
	if _, err := c.EmitAck(ctx, ev); !errors.Is(err, nexus.ErrFrameTooLarge) {
		t.Fatalf("a 70 KiB emit: %v", err)
	}
	ev.Payload = payload(t, map[string]any{"blob": string(big[:60<<10])})
	if _, err := c.EmitAck(ctx, ev); err != nil {
		t.Fatalf("a 60 KiB emit after it: %v", err)
	}
}
