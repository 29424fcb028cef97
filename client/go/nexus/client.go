// SPDX-License-Identifier: Apache-2.0

package nexus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"nexus/client/go/nexuspb"
)

// ProtocolVersion is the protocol this client speaks (Hello.protocol_version).
const ProtocolVersion = 1

// Client is a connection to nexusd that survives the broker's restarts: it reconnects with
// back-off, re-subscribes and re-registers its handlers. It is safe for concurrent use by
// many goroutines. Make one with Dial; Close it when done.
type Client struct {
	addr string
	o    options
	tls  *tls.Config

	life context.Context // cancelled by Close: handler contexts derive from it
	kill context.CancelFunc

	corr atomic.Uint64

	mu        sync.Mutex
	cn        *conn         // nil while disconnected
	up        chan struct{} // closed when cn is set; replaced when it is lost
	closed    bool
	closing   chan struct{} // closed by Close: queues nobody reads are let go
	closeOnce sync.Once
	err       error         // why the client closed
	finished  chan struct{} // closed when the supervisor has ended everything

	subs     map[*Subscription]struct{}
	calls    map[callKey]*Call
	handlers map[string]*registration
	active   map[callKey]*served
}

// callKey names a request: its campaign and event id (ids are unique per campaign).
type callKey struct {
	campaign int64
	id       string
}

// Dial connects to the broker at addr ("host:port"; "" means $NEXUS_BROKER, else
// DefaultAddr), says hello with the credentials of the options (or $NEXUS_USER and
// $NEXUS_TOKEN) and returns once the broker has welcomed it. ctx bounds this first
// connection only; later reconnections run in the background until Close.
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	o.fromEnv()
	if addr == "" {
		addr = os.Getenv("NEXUS_BROKER")
	}
	if addr == "" {
		addr = DefaultAddr
	}
	cfg, err := o.tlsConfig(addr)
	if err != nil {
		return nil, err
	}
	life, kill := context.WithCancel(context.Background())
	c := &Client{
		addr: addr, o: o, tls: cfg, life: life, kill: kill,
		up:       make(chan struct{}),
		closing:  make(chan struct{}),
		finished: make(chan struct{}),
		subs:     make(map[*Subscription]struct{}),
		calls:    make(map[callKey]*Call),
		handlers: make(map[string]*registration),
		active:   make(map[callKey]*served),
	}
	cn, err := c.connect(ctx)
	if err != nil {
		kill()
		return nil, err
	}
	go c.supervise(cn)
	return c, nil
}

// Welcome returns the broker's welcome on the current connection (nil while disconnected).
func (c *Client) Welcome() *Welcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cn == nil {
		return nil
	}
	return c.cn.welcome
}

// Addr returns the broker address the client connects to.
func (c *Client) Addr() string { return c.addr }

// Err returns why the client closed: ErrClosed after Close, the cause of a refused login or
// of a lost connection without reconnection; nil while it is open.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the client: its connection, subscriptions (their channels close), requests
// (ErrClosed) and the contexts of the handlers it runs. It waits, at most 5 s, until the
// client's goroutines have ended what they hold.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { close(c.closing) })
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.err = ErrClosed
	}
	cn := c.cn
	c.mu.Unlock()
	c.kill()
	if cn != nil {
		cn.close(ErrClosed)
	}
	select {
	case <-c.finished:
	case <-time.After(5 * time.Second):
	}
	return nil
}

func (c *Client) nextCorrelation() uint64 { return c.corr.Add(1) }

func (c *Client) report(err error) {
	if c.o.onError != nil {
		c.o.onError(err)
	}
}

func (c *Client) state(s ConnState, err error) {
	if c.o.onState != nil {
		c.o.onState(s, err)
	}
}

// conn returns the live connection, waiting for one (reconnection) until ctx ends.
func (c *Client) conn(ctx context.Context) (*conn, error) {
	for {
		c.mu.Lock()
		cn, up, closed, err := c.cn, c.up, c.closed, c.err
		c.mu.Unlock()
		if closed {
			return nil, err
		}
		if cn != nil && cn.alive() {
			return cn, nil
		}
		select {
		case <-up:
		case <-c.finished:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// connect makes one connection: TCP, TLS, hello, then the restore of subscriptions and
// handlers; on success it is the client's current connection.
func (c *Client) connect(ctx context.Context) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.o.dialTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, fmt.Errorf("nexus: connecting to %s: %w", c.addr, err)
	}
	if c.tls != nil {
		tc := tls.Client(nc, c.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("nexus: TLS handshake with %s: %w", c.addr, err)
		}
		nc = tc
	}
	cn := newConn(c, nc)
	go cn.readLoop()
	go cn.keepAlive()
	hello := &nexuspb.Frame{Body: &nexuspb.Frame_Hello{Hello: &nexuspb.Hello{
		ProtocolVersion: ProtocolVersion, Token: c.o.token, ClientName: c.o.name, User: c.o.user,
	}}}
	r, err := cn.call(ctx, hello)
	if err == nil && r.GetWelcome() == nil {
		err = fmt.Errorf("nexus: the broker answered the hello with %T", r.Body)
	}
	if err != nil {
		if errors.Is(err, ErrConnectionLost) {
			if cause := cn.cause(); cause != nil {
				err = cause
			}
			if c.tls != nil {
				// With TLS 1.3 a refused client certificate shows only here.
				err = fmt.Errorf("%w (over TLS: was the client certificate accepted?)", err)
			}
		}
		cn.close(err)
		return nil, err
	}
	cn.welcome = r.GetWelcome()
	if m := cn.welcome.MaxFrameBytes; m > frameBytesMax {
		cn.frameMax.Store(m)
	}
	cn.sendMax.Store(cn.welcome.MaxFrameBytes)
	if err := c.restore(ctx, cn); err != nil {
		cn.close(err)
		return nil, err
	}
	return cn, nil
}

// restore subscribes the client's subscriptions and registers its handlers on cn, then makes
// cn the current connection. A subscription or handler added meanwhile (while c.cn is still
// nil, so that its own call left it to the restore) is picked up by the next round: the
// check and the switch happen under one lock.
func (c *Client) restore(ctx context.Context, cn *conn) error {
	for round := 0; ; round++ {
		c.mu.Lock()
		var subs []*Subscription
		for s := range c.subs {
			if s.onConn() != cn {
				subs = append(subs, s)
			}
		}
		var regs []*registration
		for _, r := range c.handlers {
			if r.onConn() != cn {
				regs = append(regs, r)
			}
		}
		if len(subs) == 0 && len(regs) == 0 {
			if c.closed {
				c.mu.Unlock()
				return ErrClosed // Close came while this connection was being made
			}
			c.cn = cn
			close(c.up)
			c.mu.Unlock()
			c.state(Connected, nil)
			return nil
		}
		c.mu.Unlock()
		if round > 1000 {
			return errors.New("nexus: restore does not settle")
		}
		for _, s := range subs {
			if err := s.subscribeOn(ctx, cn); err != nil {
				var e *Error
				if !errors.As(err, &e) {
					return err // the connection broke: try the next one
				}
				s.end(err) // refused (permission, from_sequence without a log): final
			}
		}
		if err := c.registerOn(ctx, cn, regs, true); err != nil {
			return err
		}
	}
}

// supervise waits for the connection to break, ends what belonged to it and reconnects with
// back-off, until Close or a final error.
func (c *Client) supervise(cn *conn) {
	defer close(c.finished)
	for {
		<-cn.done
		cause := cn.cause()
		c.lost(cn, cause)
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed || !c.o.reconnect {
			c.shutdown(cause)
			return
		}
		c.state(Disconnected, cause)
		next, err := c.reconnect()
		if err != nil {
			c.shutdown(err)
			return
		}
		cn = next
	}
}

// detach stops handing out cn (called when it closes): callers wait for the next one.
func (c *Client) detach(cn *conn) {
	c.mu.Lock()
	if c.cn == cn {
		c.cn = nil
		c.up = make(chan struct{})
	}
	c.mu.Unlock()
}

// lost ends what cannot survive cn: replies waited for (cn did that), requests sent on it
// (the broker cancels them: their requester is gone) and the requests this client's
// handlers hold on it (the broker fails them, handler_lost).
func (c *Client) lost(cn *conn, cause error) {
	c.detach(cn)
	c.mu.Lock()
	var calls []*Call
	for k, call := range c.calls {
		if call.cn == cn {
			calls = append(calls, call)
			delete(c.calls, k)
		}
	}
	var served []*served
	for _, sv := range c.active {
		if sv.cn == cn {
			served = append(served, sv)
		}
	}
	c.mu.Unlock()
	callErr := ErrConnectionLost
	if errors.Is(cause, ErrClosed) {
		callErr = ErrClosed
	}
	for _, call := range calls {
		call.fail(callErr)
	}
	for _, sv := range served {
		sv.stop(cause)
	}
}

// reconnect tries to connect until it succeeds, the client is closed, or the broker refuses
// the login (a wrong token does not become right by retrying).
func (c *Client) reconnect() (*conn, error) {
	delay := c.o.backoffMin
	for {
		// Full jitter on the upper half: between delay/2 and delay.
		wait := delay/2 + time.Duration(rand.Int63n(int64(delay/2)+1))
		select {
		case <-time.After(wait):
		case <-c.life.Done():
			return nil, ErrClosed
		}
		cn, err := c.connect(c.life)
		if err == nil {
			return cn, nil
		}
		if errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrPermissionDenied) {
			return nil, err
		}
		if c.life.Err() != nil {
			return nil, ErrClosed
		}
		c.report(err)
		if delay *= 2; delay > c.o.backoffMax {
			delay = c.o.backoffMax
		}
	}
}

// shutdown makes the client final: err becomes Err(), subscriptions end with it.
func (c *Client) shutdown(err error) {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		if err == nil {
			err = ErrConnectionLost
		}
		c.err = err
	}
	err = c.err
	subs := make([]*Subscription, 0, len(c.subs))
	for s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	c.kill()
	for _, s := range subs {
		s.end(err)
	}
	c.state(Closed, err)
}

// ---- emit ------------------------------------------------------------------------------------

// Emit sends an event without asking for an acknowledgement (fire-and-forget): it returns
// once the frame is written. The broker reports a rejected one with an error frame that goes
// to WithErrorHandler. While disconnected Emit waits for the connection until ctx ends.
func (c *Client) Emit(ctx context.Context, ev *EventRequest) error {
	cn, err := c.conn(ctx)
	if err != nil {
		return err
	}
	return cn.send(ctx, &nexuspb.Frame{Body: &nexuspb.Frame_Emit{Emit: ev}})
}

// EmitAck sends an event and waits for the broker's acknowledgement: Sequence is the
// campaign sequence number given to it and EventId its id (assigned when ev has none). A
// duplicate within the broker's window returns the acknowledgement and ErrDuplicate. A
// rejected event returns *Error. If the connection breaks before the acknowledgement,
// ErrConnectionLost: the event may or may not have been accepted (resend it with the same
// EventId to be safe).
func (c *Client) EmitAck(ctx context.Context, ev *EventRequest) (*EventResponse, error) {
	cn, err := c.conn(ctx)
	if err != nil {
		return nil, err
	}
	r, err := cn.call(ctx, &nexuspb.Frame{Body: &nexuspb.Frame_Emit{Emit: ev}})
	if err != nil {
		return nil, err
	}
	ack := r.GetEmitAck()
	if ack == nil {
		return nil, fmt.Errorf("nexus: the broker answered an emit with %T", r.Body)
	}
	if ack.Message == "duplicate" {
		return ack, ErrDuplicate
	}
	return ack, nil
}

// Ping sends a ping and returns the round trip. Frames are handled in order per connection,
// so a returned Ping also means everything sent before it was handled.
func (c *Client) Ping(ctx context.Context) (time.Duration, error) {
	cn, err := c.conn(ctx)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	_, err = cn.call(ctx, &nexuspb.Frame{Body: &nexuspb.Frame_Ping{Ping: &nexuspb.Ping{Nonce: 1}}})
	return time.Since(t0), err
}

// Stats returns the broker's per-shard counters (with --accounts: admin only).
func (c *Client) Stats(ctx context.Context) (*StatsReply, error) {
	cn, err := c.conn(ctx)
	if err != nil {
		return nil, err
	}
	r, err := cn.call(ctx, &nexuspb.Frame{Body: &nexuspb.Frame_Stats{Stats: &nexuspb.StatsRequest{}}})
	if err != nil {
		return nil, err
	}
	return r.GetStatsReply(), nil
}

// ---- delivery -------------------------------------------------------------------------------

// dispatchEvent routes a delivered event (on the reader goroutine): to the request it is a
// lifecycle event of, to the handler it is a request for, and to every subscription it
// matches. The broker delivers an event once per connection even when several of those want
// it; the fan-out to each of them is the client's.
func (c *Client) dispatchEvent(cn *conn, ev *EventResponse) {
	base, state, _ := SplitType(ev.EventType)
	c.mu.Lock()
	var call *Call
	if ev.CorrelationId != "" && state != StateCancel {
		if x := c.calls[callKey{ev.CampaignId, ev.CorrelationId}]; x != nil && x.base == base {
			call = x
			if state.Terminal() {
				delete(c.calls, callKey{ev.CampaignId, ev.CorrelationId})
			}
		}
	}
	var subs []*Subscription
	for s := range c.subs {
		if s.matches(ev) {
			subs = append(subs, s)
		}
	}
	var sv *served
	var reg *registration
	switch {
	case state == StateRequested:
		if r := c.handlers[Action(ev.EventType)]; r != nil && r.serves(ev.CampaignId) {
			if c.active[callKey{ev.CampaignId, ev.EventId}] == nil {
				reg = r
			}
		}
	case state == StateCancelled || state == StateTimeout:
		sv = c.active[callKey{ev.CampaignId, ev.CorrelationId}]
	}
	c.mu.Unlock()
	if call != nil {
		call.deliver(state, ev)
	}
	if reg != nil {
		c.serve(cn, reg, ev)
	}
	if sv != nil && sv.cn == cn && sv.base == base {
		sv.stop(&RequestError{State: state, Code: ev.Code, Event: ev})
	}
	for _, s := range subs {
		s.deliver(cn, ev)
	}
}

// dispatchGap passes a gap to the subscriptions of its campaign.
func (c *Client) dispatchGap(g *Gap) {
	c.mu.Lock()
	var subs []*Subscription
	for s := range c.subs {
		if s.campaign == 0 || s.campaign == g.CampaignId {
			subs = append(subs, s)
		}
	}
	c.mu.Unlock()
	if len(subs) == 0 {
		c.report(fmt.Errorf("nexus: gap in campaign %d: %d events (%d..%d) not delivered: %s",
			g.CampaignId, g.Dropped, g.FirstSequence, g.LastSequence, g.Reason))
	}
	for _, s := range subs {
		s.gap(g)
	}
}

// clone copies an event so that the client may set its fields without touching the caller's.
func clone(ev *EventRequest) *EventRequest {
	if ev == nil {
		return &EventRequest{}
	}
	return proto.Clone(ev).(*EventRequest)
}
