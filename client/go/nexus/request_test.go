// SPDX-License-Identifier: Apache-2.0

package nexus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"nexus/client/go/nexus"
)

// A plain request: acknowledged (sequenced), started, success with the handler's result;
// a failing one ends failed with its code; an action nobody serves ends no_handler.
func TestRequestLifecycle(t *testing.T) {
	camp := campaign()
	c := dial(t, "")
	ctx := bounded(t, wait)
	call, err := c.Request(ctx, &nexus.EventRequest{
		EventType: "test:echo:v1", CampaignId: camp, Payload: payload(t, map[string]any{"q": "ping"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if call.Ack.Sequence != 1 || call.Ack.EventId != call.ID || len(call.ID) != 36 {
		t.Fatalf("ack: %v (id %s)", call.Ack, call.ID)
	}
	u := nextUpdate(t, call)
	if s, ok := u.(*nexus.Started); !ok || s.E.CorrelationId != call.ID || s.E.Sequence != 2 {
		t.Fatalf("first update %T %v", u, u.Event())
	}
	u = nextUpdate(t, call)
	r, ok := u.(*nexus.Result)
	if !ok || r.State != nexus.StateSuccess || nexus.Data(r.E)["q"] != "ping" || r.E.Sequence != 3 {
		t.Fatalf("terminal %T %v", u, u.Event())
	}
	if _, ok := <-call.Updates(); ok {
		t.Fatal("an update after the terminal one")
	}
	if res, err := call.Wait(); err != nil || res != r {
		t.Fatalf("Wait: %v, %v", res, err)
	}

	_, err = c.Call(ctx, &nexus.EventRequest{EventType: "test:fail:v1:requested", CampaignId: camp})
	var re *nexus.RequestError
	if !errors.As(err, &re) || re.State != nexus.StateFailed || re.Code != "test_failure" ||
		re.Message == "" || re.Event == nil {
		t.Fatalf("test:fail: %v", err)
	}
	_, err = c.Call(ctx, &nexus.EventRequest{EventType: "nobody:home:v1", CampaignId: camp})
	if !errors.As(err, &re) || re.Code != "no_handler" {
		t.Fatalf("no handler: %v", err)
	}
	// The same id while the first is open.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	first, err := c.Request(sctx, &nexus.EventRequest{EventType: "test:stream_ticks:v1", CampaignId: camp, EventId: "dup"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Request(ctx, &nexus.EventRequest{EventType: "test:stream_ticks:v1", CampaignId: camp, EventId: "dup"}); !errors.Is(err, nexus.ErrDuplicateRequest) {
		t.Fatalf("a second request dup: %v", err)
	}
	cancel()
	if _, err := first.Wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("first: %v", err)
	}
}

// A stream: started, stream events numbered 1, 2, 3 in order, heartbeats, success.
func TestRequestStream(t *testing.T) {
	camp := campaign()
	c := dial(t, "")
	call, err := c.Request(bounded(t, wait), &nexus.EventRequest{
		EventType: "test:stream_ticks:v1", CampaignId: camp,
		Payload: payload(t, map[string]any{"count": 4, "interval_ms": 150, "heartbeat_ms": 100}),
	})
	if err != nil {
		t.Fatal(err)
	}
	var streams, beats int
	for u := range call.Updates() {
		switch u := u.(type) {
		case *nexus.Started:
			if streams+beats != 0 {
				t.Fatal("started after stream events")
			}
		case *nexus.Stream:
			streams++
			if u.Seq != uint64(streams) || nexus.Data(u.E)["n"] != float64(streams) {
				t.Fatalf("stream %d: seq %d data %v", streams, u.Seq, nexus.Data(u.E))
			}
		case *nexus.Heartbeat:
			beats++
			if u.E.Sequence != 0 || u.StreamCount > 4 {
				t.Fatalf("heartbeat: sequence %d, count %d", u.E.Sequence, u.StreamCount)
			}
		case *nexus.Result:
			if u.State != nexus.StateSuccess {
				t.Fatalf("terminal: %s", u.State)
			}
		}
	}
	if streams != 4 || beats == 0 {
		t.Fatalf("%d stream events, %d heartbeats", streams, beats)
	}
	if _, err := call.Wait(); err != nil {
		t.Fatal(err)
	}
}

// Cancel through the context: the client emits the cancel, the broker ends the request
// cancelled, and a subscriber of the campaign sees the cancel and the cancelled.
func TestRequestCancelThroughContext(t *testing.T) {
	camp := campaign()
	c := dial(t, "")
	watcher := dial(t, "")
	s, err := watcher.Subscribe(bounded(t, wait), camp, []string{"test:stream_ticks:v1:*"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	call, err := c.Request(ctx, &nexus.EventRequest{EventType: "test:stream_ticks:v1", CampaignId: camp,
		Payload: payload(t, map[string]any{"interval_ms": 20})})
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < 3; {
		if _, ok := nextUpdate(t, call).(*nexus.Stream); ok {
			n++
		}
	}
	cancel()
	res, err := call.Wait()
	var re *nexus.RequestError
	if !errors.As(err, &re) || re.State != nexus.StateCancelled || !errors.Is(err, context.Canceled) {
		t.Fatalf("after cancel: %v", err)
	}
	if res == nil || res.State != nexus.StateCancelled || res.E.CorrelationId != call.ID {
		t.Fatalf("terminal: %+v", res)
	}
	sawCancel := false
	for {
		ev := next(t, s.Events())
		_, st, _ := nexus.SplitType(ev.EventType)
		if st == nexus.StateCancel {
			sawCancel = true
			if ev.GetMetadata().GetGlobalContext().GetCorrelationId() != call.ID {
				t.Fatalf("the cancel names %q", ev.GetMetadata().GetGlobalContext().GetCorrelationId())
			}
		}
		if st == nexus.StateCancelled {
			if !sawCancel || ev.CorrelationId != call.ID {
				t.Fatalf("cancelled (cancel seen: %v, correlation %s)", sawCancel, ev.CorrelationId)
			}
			break
		}
	}
	// A request whose context has a deadline: the deadline cancels it.
	dctx, dcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer dcancel()
	call, err = c.Request(dctx, &nexus.EventRequest{EventType: "test:stream_ticks:v1", CampaignId: camp})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := call.Wait(); !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &re) || re.State != nexus.StateCancelled {
		t.Fatalf("after the deadline: %v", err)
	}
}
