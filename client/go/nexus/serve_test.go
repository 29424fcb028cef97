// SPDX-License-Identifier: Apache-2.0

package nexus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"nexus/client/go/nexus"
)

// The handler shape: what a handler sends on streamData reaches the requester as stream
// events, in order, numbered; its return becomes success (with SetResult's payload) or
// failed (with a Fail code, else handler_failed); a subscriber sees the whole exchange.
func TestServeStreamingShape(t *testing.T) {
	camp := campaign()
	h := dial(t, "")
	req := dial(t, "")
	watcher := dial(t, "")
	ctx := bounded(t, wait)
	err := h.Handle(ctx, "gotest:count", func(ctx context.Context, ev *nexus.EventResponse, out chan<- *nexus.EventResponse) error {
		d := nexus.Data(ev)
		n := int(d["n"].(float64))
		for i := 1; i <= n; i++ {
			p, _ := nexus.NewPayload(map[string]any{"i": i})
			select {
			case out <- &nexus.EventResponse{Payload: p}:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		switch d["end"] {
		case "fail":
			return nexus.Fail("out_of_stock", "none left after %d", n)
		case "error":
			return errors.New("disk on fire")
		}
		p, _ := nexus.NewPayload(map[string]any{"total": n})
		nexus.SetResult(ctx, p)
		return nil
	}, nexus.Streaming())
	if err != nil {
		t.Fatal(err)
	}
	s, err := watcher.Subscribe(ctx, camp, []string{"gotest:count:v1:*"})
	if err != nil {
		t.Fatal(err)
	}

	const n = 50
	call, err := req.Request(ctx, &nexus.EventRequest{EventType: "gotest:count:v1", CampaignId: camp,
		Payload: payload(t, map[string]any{"n": n})})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := nextUpdate(t, call).(*nexus.Started); !ok {
		t.Fatal("no started first")
	}
	got := 0
	for u := range call.Updates() {
		switch u := u.(type) {
		case *nexus.Stream:
			got++
			if u.Seq != uint64(got) || nexus.Data(u.E)["i"] != float64(got) || u.E.CorrelationId != call.ID {
				t.Fatalf("stream event %d: seq %d, data %v", got, u.Seq, nexus.Data(u.E))
			}
		case *nexus.Result:
			if u.State != nexus.StateSuccess || nexus.Data(u.E)["total"] != float64(n) {
				t.Fatalf("terminal %s %v", u.State, nexus.Data(u.E))
			}
		}
	}
	if got != n {
		t.Fatalf("%d stream events, want %d", got, n)
	}
	// The subscriber: requested, started, the n stream events, success, in sequence.
	var last uint64
	for i := 0; i < n+3; i++ {
		ev := next(t, s.Events())
		if ev.Sequence != last+1 && last != 0 {
			t.Fatalf("%s: sequence %d after %d", ev.EventType, ev.Sequence, last)
		}
		last = ev.Sequence
		_, st, _ := nexus.SplitType(ev.EventType)
		want := nexus.StateStream
		switch i {
		case 0:
			want = nexus.StateRequested
		case 1:
			want = nexus.StateStarted
		case n + 2:
			want = nexus.StateSuccess
		}
		if st != want {
			t.Fatalf("subscriber event %d: %s, want %s", i, ev.EventType, want)
		}
	}

	_, err = req.Call(ctx, &nexus.EventRequest{EventType: "gotest:count:v1", CampaignId: camp,
		Payload: payload(t, map[string]any{"n": 2, "end": "fail"})})
	var re *nexus.RequestError
	if !errors.As(err, &re) || re.State != nexus.StateFailed || re.Code != "out_of_stock" ||
		re.Message != "none left after 2" {
		t.Fatalf("failed with a code: %v", err)
	}
	_, err = req.Call(ctx, &nexus.EventRequest{EventType: "gotest:count:v1", CampaignId: camp,
		Payload: payload(t, map[string]any{"n": 0, "end": "error"})})
	if !errors.As(err, &re) || re.Code != "handler_failed" || re.Message != "disk on fire" {
		t.Fatalf("failed with an error: %v", err)
	}
	if err := h.Handle(ctx, "gotest:count", nil); err == nil {
		t.Fatal("a second handler for one action")
	}
}

// The handler's context ends when the request ends without it: the requester cancels, the
// request times out, or the requester goes away. The handler's late return sends nothing.
func TestServeContextCancelled(t *testing.T) {
	camp := campaign()
	h := dial(t, "")
	type ended struct {
		id  string
		err error
	}
	endedCh := make(chan ended, 8)
	startedCh := make(chan string, 8)
	err := h.Handle(bounded(t, wait), "gotest:block", func(ctx context.Context, ev *nexus.EventResponse, out chan<- *nexus.EventResponse) error {
		startedCh <- ev.EventId
		p, _ := nexus.NewPayload(map[string]any{"state": "working"})
		select {
		case out <- &nexus.EventResponse{Payload: p}:
		case <-ctx.Done():
		}
		select {
		case <-ctx.Done():
			endedCh <- ended{ev.EventId, ctx.Err()}
			return ctx.Err()
		case <-time.After(3 * wait):
			endedCh <- ended{ev.EventId, errors.New("never cancelled")}
			return nil
		}
	}, nexus.Streaming())
	if err != nil {
		t.Fatal(err)
	}
	expectEnded := func(id string) {
		t.Helper()
		select {
		case e := <-endedCh:
			if e.id != id || !errors.Is(e.err, context.Canceled) {
				t.Fatalf("handler of %s ended: %v (want %s cancelled)", e.id, e.err, id)
			}
		case <-time.After(wait):
			t.Fatalf("the handler of %s was not cancelled", id)
		}
	}
	expectStarted := func(id string) {
		t.Helper()
		select {
		case got := <-startedCh:
			if got != id {
				t.Fatalf("handler started for %s, want %s", got, id)
			}
		case <-time.After(wait):
			t.Fatalf("no handler for %s", id)
		}
	}

	// 1. The requester cancels through its context.
	req := dial(t, "")
	ctx, cancel := context.WithCancel(bounded(t, wait))
	call, err := req.Request(ctx, &nexus.EventRequest{EventType: "gotest:block:v1", CampaignId: camp})
	if err != nil {
		t.Fatal(err)
	}
	expectStarted(call.ID)
	for {
		if _, ok := nextUpdate(t, call).(*nexus.Stream); ok {
			break
		}
	}
	cancel()
	expectEnded(call.ID)
	if res, err := call.Wait(); res == nil || res.State != nexus.StateCancelled {
		t.Fatalf("requester: %v", err)
	}

	// 2. The request times out (timeout_ms in its payload).
	call, err = req.Request(bounded(t, wait), &nexus.EventRequest{EventType: "gotest:block:v1",
		CampaignId: camp, Payload: payload(t, map[string]any{"timeout_ms": 300})})
	if err != nil {
		t.Fatal(err)
	}
	expectStarted(call.ID)
	expectEnded(call.ID)
	if res, _ := call.Wait(); res == nil || res.State != nexus.StateTimeout {
		t.Fatalf("requester: %+v", res)
	}

	// 3. The requester goes away.
	gone, err := nexus.Dial(bounded(t, wait), "")
	if err != nil {
		t.Fatal(err)
	}
	call, err = gone.Request(bounded(t, wait), &nexus.EventRequest{EventType: "gotest:block:v1", CampaignId: camp})
	if err != nil {
		t.Fatal(err)
	}
	expectStarted(call.ID)
	gone.Close()
	expectEnded(call.ID)
	if _, err := call.Wait(); !errors.Is(err, nexus.ErrConnectionLost) && !errors.Is(err, nexus.ErrClosed) {
		t.Fatalf("the gone requester's call: %v", err)
	}

	// The handler still serves: a fresh request is answered (no stale state).
	call, err = req.Request(bounded(t, wait), &nexus.EventRequest{EventType: "gotest:block:v1", CampaignId: camp})
	if err != nil {
		t.Fatal(err)
	}
	expectStarted(call.ID)
	if err := call.Cancel(bounded(t, wait)); err != nil {
		t.Fatal(err)
	}
	expectEnded(call.ID)
}

// Unary handlers answer with one result; a panicking handler fails its request instead of
// the program; requests of campaigns a handler did not register for are not its.
func TestServeUnary(t *testing.T) {
	camp := campaign()
	h := dial(t, "")
	req := dial(t, "")
	ctx := bounded(t, wait)
	err := h.Handle(ctx, "gotest:add", nexus.Unary(func(ctx context.Context, ev *nexus.EventResponse) (*nexus.Payload, error) {
		d := nexus.Data(ev)
		if d["panic"] == true {
			panic("boom")
		}
		return nexus.NewPayload(map[string]any{"sum": d["a"].(float64) + d["b"].(float64)})
	}), nexus.Campaigns(camp))
	if err != nil {
		t.Fatal(err)
	}
	r, err := req.Call(ctx, &nexus.EventRequest{EventType: "gotest:add:v1", CampaignId: camp,
		Payload: payload(t, map[string]any{"a": 2, "b": 40})})
	if err != nil || nexus.Data(r)["sum"] != float64(42) {
		t.Fatalf("add: %v, %v", nexus.Data(r), err)
	}
	_, err = req.Call(ctx, &nexus.EventRequest{EventType: "gotest:add:v1", CampaignId: camp,
		Payload: payload(t, map[string]any{"panic": true})})
	var re *nexus.RequestError
	if !errors.As(err, &re) || re.Code != "handler_panic" || re.Message != "boom" {
		t.Fatalf("panic: %v", err)
	}
	_, err = req.Call(ctx, &nexus.EventRequest{EventType: "gotest:add:v1", CampaignId: campaign()})
	if !errors.As(err, &re) || re.Code != "no_handler" {
		t.Fatalf("another campaign: %v", err)
	}
	if err := h.Handle(ctx, "not-an-action", nil); err == nil {
		t.Fatal("an action without a colon")
	}
	for i := 0; i < 20; i++ {
		r, err := req.Call(ctx, &nexus.EventRequest{EventType: "gotest:add:v1", CampaignId: camp,
			Payload: payload(t, map[string]any{"a": i, "b": 1})})
		if err != nil || nexus.Data(r)["sum"] != float64(i+1) {
			t.Fatal(fmt.Sprint(i, nexus.Data(r), err))
		}
	}
}
