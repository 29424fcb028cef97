// SPDX-License-Identifier: Apache-2.0

package nexus

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"nexus/client/go/nexuspb"
)

// Subscription receives the events of a campaign (or of every campaign: campaign 0, the
// firehose) whose type matches its patterns, in campaign sequence order. Make one with
// Client.Subscribe or Client.SubscribeFunc. It lives until Close, the end of the context it
// was made with, or the client's end; after a reconnection the client subscribes it again.
type Subscription struct {
	c        *Client
	campaign int64
	patterns []string
	userID   string
	from     uint64 // from_sequence of the first subscribe
	resume   bool
	onGap    func(*Gap)

	q *queue[*EventResponse]

	op sync.Mutex // one subscribe or unsubscribe on the wire at a time

	mu      sync.Mutex
	cn      *conn // the connection it is subscribed on (nil: none yet)
	id      uint64
	pending *conn            // a subscribe sent on it, not yet acknowledged
	held    []*EventResponse // resume: what arrived while pending, sorted at the ack
	last    uint64           // highest sequence delivered (resume)
	err     error
	done    chan struct{}
}

// SubscribeOption configures a subscription.
type SubscribeOption func(*Subscription)

// UserFilter delivers only events whose metadata.global_context.user_id is id (the broker
// filters; docs/PROTOCOL.md, "subscribe").
func UserFilter(id string) SubscribeOption { return func(s *Subscription) { s.userID = id } }

// FromSequence replays the campaign's events from sequence seq out of the broker's log
// before the live ones, with no gap and no duplicate where they meet (a broker started with
// --data-dir; the campaign must not be 0). A program that saw a campaign up to sequence k
// resumes with FromSequence(k+1), across restarts of the broker too. Implies Resume.
func FromSequence(seq uint64) SubscribeOption {
	return func(s *Subscription) { s.from, s.resume = seq, true }
}

// Resume makes every re-subscription after a reconnection ask for the events after the last
// one delivered (from_sequence), so that a broker restart loses nothing. Needs what
// FromSequence needs; on a broker without --data-dir the re-subscription is refused and the
// subscription ends with that error (ErrBadRequest).
func Resume() SubscribeOption { return func(s *Subscription) { s.resume = true } }

// OnGap is called (on the client's reader: it must not block) for each gap frame of the
// subscription's campaign: events the broker dropped for this connection under
// --slow-policy drop. Without it gaps go to WithErrorHandler.
func OnGap(f func(*Gap)) SubscribeOption { return func(s *Subscription) { s.onGap = f } }

// Subscribe subscribes to campaign's events whose type matches one of patterns
// ("service:action:vN:state", any segment "*"; none, or "*", for every type) and returns
// once the broker has acknowledged it: an event emitted after Subscribe returns is delivered.
// Events come out of Events(). The subscription ends when ctx ends (or Close).
func (c *Client) Subscribe(ctx context.Context, campaign int64, patterns []string,
	opts ...SubscribeOption) (*Subscription, error) {
	s := &Subscription{
		c:        c,
		campaign: campaign,
		patterns: append([]string(nil), patterns...),
		q:        newQueue[*EventResponse](c.o.queueLimit, c.closing),
		done:     make(chan struct{}),
	}
	for _, opt := range opts {
		opt(s)
	}
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.subs[s] = struct{}{}
	c.mu.Unlock()
	for {
		cn, err := c.conn(ctx)
		if err == nil {
			err = s.subscribeOn(ctx, cn)
		}
		if err == nil {
			break
		}
		if errors.Is(err, ErrConnectionLost) && ctx.Err() == nil {
			continue // the next connection's restore, or this loop, subscribes it
		}
		s.end(err)
		return nil, err
	}
	if ctx.Done() != nil {
		go func() {
			select {
			case <-ctx.Done():
				s.closeWith(ctx.Err(), true)
			case <-s.done:
			}
		}()
	}
	return s, nil
}

// SubscribeFunc is Subscribe with a callback: f is called for each event, one at a time, on
// a goroutine of the subscription's own (it may call the client).
func (c *Client) SubscribeFunc(ctx context.Context, campaign int64, patterns []string,
	f func(*EventResponse), opts ...SubscribeOption) (*Subscription, error) {
	s, err := c.Subscribe(ctx, campaign, patterns, opts...)
	if err != nil {
		return nil, err
	}
	go func() {
		for ev := range s.Events() {
			f(ev)
		}
	}()
	return s, nil
}

// Events returns the channel the subscription's events come out of. It is closed when the
// subscription ends (then Err says why); events still queued at an end other than Close are
// delivered first.
func (s *Subscription) Events() <-chan *EventResponse { return s.q.channel() }

// Done is closed when the subscription has ended.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err returns why the subscription ended (nil while it is live): ErrClosed after Close, the
// context's error, ErrSlowConsumer, or the client's end (Client.Err).
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// LastSequence returns the highest campaign sequence number delivered so far (with
// FromSequence or Resume; 0 otherwise): resume from LastSequence()+1.
func (s *Subscription) LastSequence() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Close unsubscribes (waiting at most 5 s for the broker's acknowledgement) and closes the
// channel; events not yet read are dropped.
func (s *Subscription) Close() error {
	s.closeWith(ErrClosed, true)
	return nil
}

// closeWith ends the subscription with err and unsubscribes; drop drops the events not yet
// read (else they are still delivered).
func (s *Subscription) closeWith(err error, drop bool) {
	cn, id := s.end(err)
	if drop {
		s.q.stop()
	}
	if cn != nil && cn.alive() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.op.Lock()
		defer s.op.Unlock()
		_, _ = cn.call(ctx, &nexuspb.Frame{Body: &nexuspb.Frame_Unsubscribe{
			Unsubscribe: &nexuspb.Unsubscribe{SubscriptionId: id}}})
	}
}

// end removes the subscription from its client and finishes its queue (the events queued are
// still delivered). The first cause wins. Returns the connection and id it was subscribed
// with, for an unsubscribe.
func (s *Subscription) end(err error) (*conn, uint64) {
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return nil, 0
	}
	s.err = err
	cn, id := s.cn, s.id
	s.cn, s.pending = nil, nil
	s.mu.Unlock()
	s.q.finish()
	close(s.done)
	return cn, id
}

func (s *Subscription) onConn() *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cn
}

// subscribeOn subscribes on cn unless that is done already: Subscribe and a reconnection's
// restore may both try.
func (s *Subscription) subscribeOn(ctx context.Context, cn *conn) error {
	s.op.Lock()
	defer s.op.Unlock()
	s.mu.Lock()
	if s.err != nil || s.cn == cn {
		err := s.err
		s.mu.Unlock()
		return err
	}
	from := s.from
	if s.resume && s.last > 0 {
		from = s.last + 1
	}
	s.pending, s.held = cn, nil
	s.mu.Unlock()
	sub := &nexuspb.SubscribeRequest{EventTypes: s.patterns, CampaignId: s.campaign, FromSequence: from}
	if s.userID != "" {
		sub.Metadata = &Metadata{GlobalContext: &GlobalContext{UserId: s.userID}}
	}
	r, err := cn.call(ctx, &nexuspb.Frame{Body: &nexuspb.Frame_Subscribe{Subscribe: sub}})
	if err == nil && r.GetSubscribeAck() == nil {
		err = errors.New("nexus: the broker answered a subscribe with something else")
	}
	s.mu.Lock()
	if s.pending == cn {
		s.pending = nil
	}
	if err != nil || s.err != nil {
		s.held = nil
		s.mu.Unlock()
		return err
	}
	s.cn, s.id = cn, r.GetSubscribeAck().SubscriptionId
	held := s.held
	s.held = nil
	// A resumed subscription's replay came before the ack, possibly interleaved with live
	// events other subscriptions of this connection also match: in sequence order, once each.
	sort.SliceStable(held, func(i, j int) bool { return held[i].Sequence < held[j].Sequence })
	var out []*EventResponse
	for _, ev := range held {
		if ev.Sequence == 0 || ev.Sequence > s.last {
			out = append(out, ev)
			if ev.Sequence > s.last {
				s.last = ev.Sequence
			}
		}
	}
	s.mu.Unlock()
	for _, ev := range out {
		if !s.q.push(ev) {
			go s.closeWith(ErrSlowConsumer, false)
			break
		}
	}
	return nil
}

// matches reports whether ev is for this subscription (the broker's own rules).
func (s *Subscription) matches(ev *EventResponse) bool {
	if s.campaign != 0 && ev.CampaignId != s.campaign {
		return false
	}
	if s.userID != "" && UserID(ev) != s.userID {
		return false
	}
	if len(s.patterns) == 0 {
		return true
	}
	for _, p := range s.patterns {
		if MatchType(p, ev.EventType) {
			return true
		}
	}
	return false
}

// deliver queues ev, received on cn (on the reader goroutine). A resuming subscription holds
// what arrives while its subscribe is pending, skips sequences it has delivered, and takes
// nothing from a connection it is not subscribed on: another subscription's events there
// would move its resume point past events it has not seen.
func (s *Subscription) deliver(cn *conn, ev *EventResponse) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	if s.resume && ev.Sequence != 0 {
		switch {
		case s.pending == cn:
			s.held = append(s.held, ev)
			s.mu.Unlock()
			return
		case s.cn != cn || ev.Sequence <= s.last:
			s.mu.Unlock()
			return
		}
		s.last = ev.Sequence
	}
	s.mu.Unlock()
	if !s.q.push(ev) {
		go s.closeWith(ErrSlowConsumer, false)
	}
}

func (s *Subscription) gap(g *Gap) {
	if s.onGap != nil {
		s.onGap(g)
		return
	}
	s.c.report(&GapError{Gap: g})
}

// GapError reports a gap frame (events the broker dropped for this connection) to
// WithErrorHandler when its subscription has no OnGap.
type GapError struct{ Gap *Gap }

func (e *GapError) Error() string {
	g := e.Gap
	return fmt.Sprintf("nexus: gap in campaign %d: %d events between sequences %d and %d not delivered (%s)",
		g.CampaignId, g.Dropped, g.FirstSequence, g.LastSequence, g.Reason)
}
