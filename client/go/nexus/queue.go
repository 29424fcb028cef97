// SPDX-License-Identifier: Apache-2.0

package nexus

import "sync"

// queue hands values from the client's reader to one consumer through a channel. push never
// blocks: a program that reads one subscription slowly must not stall the connection's
// replies, pings and other subscriptions. The bound is a count (limit); past it push returns
// false and the owner ends the stream with ErrSlowConsumer, never dropping silently.
//
// The pump goroutine that feeds the channel starts on the first call to channel(), so a
// request whose updates nobody reads costs no goroutine.
type queue[T any] struct {
	mu      sync.Mutex
	items   []T
	limit   int
	closed  bool // no more pushes; out closes once the items are delivered
	started bool
	wake    chan struct{} // capacity 1: "items or closed changed"
	stopped chan struct{} // closed by stop: drop everything, close out now
	stopOne sync.Once
	release <-chan struct{} // closed when the client closes: the pump ends too
	out     chan T
}

// newQueue returns a queue of at most limit values whose pump also ends when release closes
// (a consumer that stopped reading keeps it at most that long).
func newQueue[T any](limit int, release <-chan struct{}) *queue[T] {
	return &queue[T]{
		limit:   limit,
		release: release,
		wake:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
		out:     make(chan T),
	}
}

// push appends v. Returns false (v not queued) when the queue holds limit values already or
// is closed.
func (q *queue[T]) push(v T) bool {
	q.mu.Lock()
	if q.closed || len(q.items) >= q.limit {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, v)
	q.mu.Unlock()
	q.signal()
	return true
}

func (q *queue[T]) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// finish says no more values will come: the channel closes after the queued ones.
func (q *queue[T]) finish() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.signal()
}

// stop drops what is queued and closes the channel (the consumer went away).
func (q *queue[T]) stop() {
	q.finish()
	q.stopOne.Do(func() { close(q.stopped) })
}

// channel returns the channel the values come out of, starting the pump.
func (q *queue[T]) channel() <-chan T {
	q.mu.Lock()
	if !q.started {
		q.started = true
		go q.pump()
	}
	q.mu.Unlock()
	return q.out
}

func (q *queue[T]) pump() {
	defer close(q.out)
	for {
		q.mu.Lock()
		if len(q.items) == 0 {
			closed := q.closed
			q.mu.Unlock()
			if closed {
				return
			}
			select {
			case <-q.wake:
			case <-q.stopped:
				return
			case <-q.release:
				return
			}
			continue
		}
		v := q.items[0]
		var zero T
		q.items[0] = zero
		q.items = q.items[1:]
		q.mu.Unlock()
		select {
		case q.out <- v:
		case <-q.stopped:
			return
		case <-q.release:
			return
		}
	}
}
