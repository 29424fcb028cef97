// SPDX-License-Identifier: Apache-2.0

package nexus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"nexus/client/go/nexuspb"
)

// Handler serves one request of a registered action: the shape of the ancestor's streaming
// handlers. event is the request (its `requested` event: EventId, CampaignId, Payload,
// Metadata). Every value sent on streamData becomes a `stream` event of the request (its
// Payload is sent; the broker numbers them and adds heartbeats), in order. Returning nil
// ends the request `success` (with the payload given to SetResult, if any); returning an
// error ends it `failed`: with a *HandlerError (Fail) its code, else code handler_failed and
// the error's text.
//
// ctx is cancelled when the request ends without the handler: the requester cancelled or
// went away (`cancelled`), it outlived its timeout (`timeout`), the connection to the
// broker broke, or the client closed. Then nothing more is sent for it, whatever the handler
// returns; a handler should watch ctx.Done() and return, and never send on streamData after
// returning.
type Handler func(ctx context.Context, event *EventResponse, streamData chan<- *EventResponse) error

// HandlerOption configures a handler registration.
type HandlerOption func(*registration)

// Streaming declares the action's requests streams (HandlerSpec.streaming): the broker sends
// heartbeats to the requester and applies the stream timeout. Without it, the broker's
// inherited rule decides (an action starting with stream_, and a few others:
// docs/PROTOCOL.md).
func Streaming() HandlerOption { return func(r *registration) { r.streaming = true } }

// Campaigns limits the registration to requests of these campaigns (default: every
// campaign).
func Campaigns(ids ...int64) HandlerOption {
	return func(r *registration) { r.campaigns = append(r.campaigns, ids...) }
}

type registration struct {
	action    string
	h         Handler
	streaming bool
	campaigns []int64

	op sync.Mutex // one registration on the wire at a time
	mu sync.Mutex
	cn *conn // the connection it is registered on
}

func (r *registration) onConn() *conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cn
}

func (r *registration) serves(campaign int64) bool {
	if len(r.campaigns) == 0 {
		return true
	}
	for _, c := range r.campaigns {
		if c == campaign {
			return true
		}
	}
	return false
}

// Handle registers this client as an external handler of action ("service:action",
// docs/PROTOCOL.md, "External handlers") and returns once the broker has acknowledged it.
// From then on each request for the action that the broker gives this client runs h in a
// goroutine of its own. The registration lasts as long as the client, and is made again
// after each reconnection. ctx bounds the registration only.
//
// The broker balances an action's requests among the connections registered for it. Serve
// from a client that does not also subscribe to the action's `requested` events: such an
// event, delivered for the subscription when another handler got the request, cannot be told
// from one given to this client (its replies are then refused, and h's context is
// cancelled).
func (c *Client) Handle(ctx context.Context, action string, h Handler, opts ...HandlerOption) error {
	if strings.Count(action, ":") != 1 {
		return fmt.Errorf("nexus: handler action %q is not service:action", action)
	}
	reg := &registration{action: action, h: h}
	for _, opt := range opts {
		opt(reg)
	}
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return err
	}
	if c.handlers[action] != nil {
		c.mu.Unlock()
		return fmt.Errorf("nexus: %s has a handler already", action)
	}
	c.handlers[action] = reg
	c.mu.Unlock()
	for {
		cn, err := c.conn(ctx)
		if err == nil {
			err = c.registerOn(ctx, cn, []*registration{reg}, false)
		}
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrConnectionLost) && ctx.Err() == nil {
			continue
		}
		c.mu.Lock()
		if c.handlers[action] == reg {
			delete(c.handlers, action)
		}
		c.mu.Unlock()
		return err
	}
}

// registerOn registers regs on cn, one frame each (a refusal then concerns one action).
// While restoring, a refused registration is removed from the client and reported;
// otherwise its error is returned, as is a broken connection.
func (c *Client) registerOn(ctx context.Context, cn *conn, regs []*registration, restoring bool) error {
	for _, reg := range regs {
		err := reg.registerOn(ctx, cn)
		var e *Error
		if restoring && errors.As(err, &e) {
			c.mu.Lock()
			if c.handlers[reg.action] == reg {
				delete(c.handlers, reg.action)
			}
			c.mu.Unlock()
			c.report(fmt.Errorf("nexus: registering the handler of %s again: %w", reg.action, err))
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// registerOn registers on cn unless that is done already: Handle and a reconnection's
// restore may both try.
func (reg *registration) registerOn(ctx context.Context, cn *conn) error {
	reg.op.Lock()
	defer reg.op.Unlock()
	if reg.onConn() == cn {
		return nil
	}
	f := &nexuspb.Frame{Body: &nexuspb.Frame_Register{Register: &nexuspb.RegisterHandlers{
		Handlers: []*nexuspb.HandlerSpec{{
			Action: reg.action, Streaming: reg.streaming, Campaigns: reg.campaigns,
		}},
	}}}
	r, err := cn.call(ctx, f)
	if err == nil && r.GetRegisterAck() == nil {
		err = errors.New("nexus: the broker answered a registration with something else")
	}
	if err != nil {
		return err
	}
	reg.mu.Lock()
	reg.cn = cn
	reg.mu.Unlock()
	return nil
}

// served is one request a handler of this client holds.
type served struct {
	c    *Client
	cn   *conn
	key  callKey
	base string

	cancel context.CancelFunc

	mu     sync.Mutex
	ended  error // set when the request ended without the handler: no reply is sent then
	result *Payload
}

type servedKey struct{}

// stop ends the request for the handler: its context is cancelled, and nothing more is sent.
func (sv *served) stop(cause error) {
	sv.mu.Lock()
	if sv.ended == nil {
		sv.ended = cause
	}
	sv.mu.Unlock()
	sv.cancel()
}

func (sv *served) endedErr() error {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return sv.ended
}

// SetResult sets the payload of the `success` a Handler's request ends with when the
// handler returns nil. ctx is the handler's context; elsewhere SetResult does nothing and
// returns false.
func SetResult(ctx context.Context, p *Payload) bool {
	sv, ok := ctx.Value(servedKey{}).(*served)
	if !ok {
		return false
	}
	sv.mu.Lock()
	sv.result = p
	sv.mu.Unlock()
	return true
}

// Unary adapts a function that answers a request with one result (no stream events) to a
// Handler: the returned payload goes out with `success`, an error as for Handler.
func Unary(f func(ctx context.Context, event *EventResponse) (*Payload, error)) Handler {
	return func(ctx context.Context, ev *EventResponse, _ chan<- *EventResponse) error {
		p, err := f(ctx, ev)
		if err == nil {
			SetResult(ctx, p)
		}
		return err
	}
}

// serve starts the handler of reg for request ev, received on cn (on the reader goroutine).
func (c *Client) serve(cn *conn, reg *registration, ev *EventResponse) {
	base, _, _ := SplitType(ev.EventType)
	ctx, cancel := context.WithCancel(c.life)
	sv := &served{c: c, cn: cn, key: callKey{ev.CampaignId, ev.EventId}, base: base, cancel: cancel}
	c.mu.Lock()
	if c.active[sv.key] != nil {
		c.mu.Unlock()
		cancel()
		return
	}
	c.active[sv.key] = sv
	c.mu.Unlock()
	go sv.run(context.WithValue(ctx, servedKey{}, sv), reg, ev)
}

// run calls the handler, relays what it sends on streamData as `stream` replies, in order,
// and its return as `success` or `failed`.
func (sv *served) run(ctx context.Context, reg *registration, ev *EventResponse) {
	defer func() {
		sv.c.mu.Lock()
		if sv.c.active[sv.key] == sv {
			delete(sv.c.active, sv.key)
		}
		sv.c.mu.Unlock()
		sv.cancel()
	}()
	// Unbuffered: every value the handler sent was received here before it returned, so the
	// stream replies all precede the terminal one.
	stream := make(chan *EventResponse)
	ret := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				ret <- &HandlerError{Code: "handler_panic", Message: fmt.Sprint(p)}
			}
		}()
		ret <- reg.h(ctx, ev, stream)
	}()
	for {
		select {
		case v := <-stream:
			if sv.endedErr() == nil && ctx.Err() == nil {
				sv.streamReply(ctx, v)
			}
		case err := <-ret:
			sv.finish(ctx, err)
			return
		}
	}
}

func (sv *served) emit(state State, p *Payload) *nexuspb.Frame {
	return &nexuspb.Frame{Body: &nexuspb.Frame_Emit{Emit: &EventRequest{
		EventType:  sv.base + ":" + string(state),
		CampaignId: sv.key.campaign,
		Metadata:   &Metadata{GlobalContext: &GlobalContext{CorrelationId: sv.key.id}},
		Payload:    p,
	}}}
}

// streamReply sends one `stream` reply. Its acknowledgement is not waited for (a stream
// would go at one event per round trip); a refusal, when it comes, ends the request.
func (sv *served) streamReply(ctx context.Context, v *EventResponse) {
	err := sv.cn.sendAsync(ctx, sv.emit(StateStream, v.GetPayload()), func(r *nexuspb.Frame) {
		if e := r.GetError(); e != nil {
			err := &Error{Code: e.Code, Message: e.Message}
			sv.c.report(fmt.Errorf("nexus: stream reply for %s (%s): %w", sv.key.id, sv.base, err))
			sv.stop(err)
		}
	})
	if err != nil {
		sv.stop(err)
	}
}

// finish sends the terminal reply for the handler's return, unless the request ended
// without it.
func (sv *served) finish(ctx context.Context, herr error) {
	if sv.endedErr() != nil || ctx.Err() != nil {
		return
	}
	sv.mu.Lock()
	result := sv.result
	sv.mu.Unlock()
	f := sv.emit(StateSuccess, result)
	if herr != nil {
		code, msg := "handler_failed", herr.Error()
		var he *HandlerError
		if errors.As(herr, &he) {
			code, msg = he.Code, he.Message
		}
		data, _ := structpb.NewStruct(map[string]any{"code": code, "message": msg})
		f = sv.emit(StateFailed, &Payload{Data: data})
	}
	tctx, cancel := context.WithTimeout(sv.c.life, 10*time.Second)
	defer cancel()
	if _, err := sv.cn.call(tctx, f); err != nil {
		sv.c.report(fmt.Errorf("nexus: reply for %s (%s): %w", sv.key.id, sv.base, err))
	}
}
