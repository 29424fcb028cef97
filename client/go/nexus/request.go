// SPDX-License-Identifier: Apache-2.0

package nexus

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"nexus/client/go/nexuspb"
)

// Update is one step of a request's lifecycle (docs/PROTOCOL.md, "Requests and their
// lifecycle"): *Started, *Stream, *Heartbeat, then exactly one *Result.
type Update interface {
	// Event returns the lifecycle event itself.
	Event() *EventResponse
}

// Started: a handler took the request.
type Started struct{ E *EventResponse }

// Stream is one stream event; Seq counts them, 1, 2, 3, ... per request.
type Stream struct {
	Seq uint64
	E   *EventResponse
}

// Heartbeat: the stream is alive; StreamCount stream events so far, Age since it started.
// Heartbeats go to the requester only and carry no campaign sequence.
type Heartbeat struct {
	StreamCount uint64
	Age         time.Duration
	E           *EventResponse
}

// Result is the terminal event: State is success, failed (Code says why), cancelled or
// timeout.
type Result struct {
	State State
	Code  string
	E     *EventResponse
}

// Event returns the `started` event.
func (u *Started) Event() *EventResponse { return u.E }

// Event returns the `stream` event.
func (u *Stream) Event() *EventResponse { return u.E }

// Event returns the `heartbeat` event.
func (u *Heartbeat) Event() *EventResponse { return u.E }

// Event returns the terminal event.
func (u *Result) Event() *EventResponse { return u.E }

// Err returns nil for success, else a *RequestError describing the end.
func (r *Result) Err() error {
	if r.State == StateSuccess {
		return nil
	}
	msg, _ := Data(r.E)["message"].(string)
	return &RequestError{State: r.State, Code: r.Code, Message: msg, Event: r.E}
}

// Call is a request in flight. Its updates come out of Updates(); Wait returns how it ended.
type Call struct {
	// ID is the request's event id (the correlation id of its lifecycle events).
	ID string
	// Campaign is the campaign it was made in.
	Campaign int64
	// Ack is the broker's acknowledgement of the `requested` event (its sequence).
	Ack *EventResponse

	c    *Client
	base string // service:action:vN
	cn   *conn
	q    *queue[Update]

	mu        sync.Mutex
	result    *Result
	err       error
	cancelled error // the context's error, when the request was cancelled through it
	done      chan struct{}
}

// Request sends a request (docs/PROTOCOL.md: an emit whose type ends in `:requested`) and
// returns once the broker has acknowledged it. req.EventType is "service:action:vN" (or ends
// in ":requested"); an empty EventId gets a fresh UUIDv4. The lifecycle comes out of
// Updates() and Wait.
//
// Cancel through ctx: when ctx ends before the request does, the client emits
// "service:action:vN:cancel" for it; the request then ends `cancelled` (Wait's error is a
// *RequestError that also matches ctx's error with errors.Is).
//
// If the connection breaks, the request ends with ErrConnectionLost: the broker cancels the
// requests of a requester that went away.
func (c *Client) Request(ctx context.Context, req *EventRequest) (*Call, error) {
	ev := clone(req)
	base := strings.TrimSuffix(ev.EventType, ":"+string(StateRequested))
	ev.EventType = base + ":" + string(StateRequested)
	if ev.EventId == "" {
		ev.EventId = newEventID()
	}
	call := &Call{
		ID: ev.EventId, Campaign: ev.CampaignId, c: c, base: base,
		q: newQueue[Update](c.o.queueLimit, c.closing), done: make(chan struct{}),
	}
	key := callKey{ev.CampaignId, ev.EventId}
	cn, err := c.conn(ctx)
	if err != nil {
		return nil, err
	}
	// Registered before the emit: the lifecycle may overtake the acknowledgement.
	c.mu.Lock()
	if c.calls[key] != nil {
		c.mu.Unlock()
		return nil, ErrDuplicateRequest
	}
	call.cn = cn
	c.calls[key] = call
	c.mu.Unlock()
	r, err := cn.call(ctx, &nexuspb.Frame{Body: &nexuspb.Frame_Emit{Emit: ev}})
	if err == nil && r.GetEmitAck() == nil {
		err = errors.New("nexus: the broker answered a request with something else")
	}
	if err == nil && r.GetEmitAck().Message == "duplicate" {
		err = ErrDuplicate
	}
	if err != nil {
		c.mu.Lock()
		if c.calls[key] == call {
			delete(c.calls, key)
		}
		c.mu.Unlock()
		if ctx.Err() != nil {
			// The request may have gone out before ctx ended: cancel it, best effort.
			go func() {
				bg, stop := context.WithTimeout(context.Background(), 10*time.Second)
				defer stop()
				_ = call.Cancel(bg)
			}()
		}
		return nil, err
	}
	call.Ack = r.GetEmitAck()
	if ctx.Done() != nil {
		go call.watch(ctx)
	}
	return call, nil
}

// Call sends a request and waits for its end: the terminal event of a success, else an
// error (*RequestError, ErrConnectionLost, ...). Stream events and heartbeats are skipped.
func (c *Client) Call(ctx context.Context, req *EventRequest) (*EventResponse, error) {
	call, err := c.Request(ctx, req)
	if err != nil {
		return nil, err
	}
	r, err := call.Wait()
	if r != nil {
		return r.E, err
	}
	return nil, err
}

// Updates returns the channel of the request's lifecycle: *Started, *Stream, *Heartbeat
// and, last, *Result; then it is closed (also when the request ends without a terminal
// event: see Wait).
func (call *Call) Updates() <-chan Update { return call.q.channel() }

// Done is closed when the request has ended.
func (call *Call) Done() <-chan struct{} { return call.done }

// Wait waits for the end of the request and returns its terminal event (nil when it ended
// without one: the connection broke, or the client closed) and nil for success, else the
// error. It does not consume Updates.
func (call *Call) Wait() (*Result, error) {
	<-call.done
	call.mu.Lock()
	defer call.mu.Unlock()
	return call.result, call.err
}

// Cancel asks the broker to cancel the request (emits "service:action:vN:cancel") and waits
// for the acknowledgement of the cancel; the request then ends `cancelled`. Cancelling a
// request that has ended returns ErrUnknownRequest.
func (call *Call) Cancel(ctx context.Context) error {
	cn := call.cn
	if !cn.alive() {
		return ErrConnectionLost
	}
	ev := &EventRequest{
		EventType:  call.base + ":" + string(StateCancel),
		CampaignId: call.Campaign,
		Metadata:   &Metadata{GlobalContext: &GlobalContext{CorrelationId: call.ID}},
	}
	_, err := cn.call(ctx, &nexuspb.Frame{Body: &nexuspb.Frame_Emit{Emit: ev}})
	return err
}

// watch cancels the request when ctx ends before it does, and gives up waiting for the
// broker's `cancelled` after 10 s.
func (call *Call) watch(ctx context.Context) {
	select {
	case <-call.done:
		return
	case <-ctx.Done():
	}
	call.mu.Lock()
	call.cancelled = ctx.Err()
	call.mu.Unlock()
	bg, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	if err := call.Cancel(bg); err != nil && !errors.Is(err, ErrUnknownRequest) {
		call.fail(ctx.Err())
		return
	}
	select {
	case <-call.done:
	case <-bg.Done():
		call.fail(ctx.Err())
	}
}

// deliver takes one lifecycle event (on the reader goroutine).
func (call *Call) deliver(state State, ev *EventResponse) {
	var u Update
	switch state {
	case StateStarted:
		u = &Started{E: ev}
	case StateStream:
		u = &Stream{Seq: ev.StreamSeq, E: ev}
	case StateHeartbeat:
		d := Data(ev)
		n, _ := d["stream_count"].(float64)
		age, _ := d["age_ms"].(float64)
		u = &Heartbeat{StreamCount: uint64(n), Age: time.Duration(age) * time.Millisecond, E: ev}
	default:
		if !state.Terminal() {
			return
		}
		r := &Result{State: state, Code: ev.Code, E: ev}
		call.finish(r)
		return
	}
	if !call.q.push(u) {
		// Nobody reads the updates: end the request rather than lose them silently.
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = call.Cancel(ctx)
		}()
		call.fail(ErrSlowConsumer)
	}
}

func (call *Call) finish(r *Result) {
	call.mu.Lock()
	if call.result != nil || call.err != nil {
		call.mu.Unlock()
		return
	}
	call.result = r
	call.err = r.Err()
	var re *RequestError
	if errors.As(call.err, &re) && call.cancelled != nil && r.State == StateCancelled {
		re.cause = call.cancelled
	}
	call.mu.Unlock()
	call.q.push(r) // the queue's limit leaves no room: then Wait still has it
	call.q.finish()
	close(call.done)
}

// fail ends the request without a terminal event.
func (call *Call) fail(err error) {
	call.mu.Lock()
	if call.result != nil || call.err != nil {
		call.mu.Unlock()
		return
	}
	call.err = err
	call.mu.Unlock()
	call.c.mu.Lock()
	if k := (callKey{call.Campaign, call.ID}); call.c.calls[k] == call {
		delete(call.c.calls, k)
	}
	call.c.mu.Unlock()
	call.q.finish()
	close(call.done)
}
