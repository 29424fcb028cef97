// SPDX-License-Identifier: Apache-2.0

package nexus

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"nexus/client/go/nexuspb"
)

// conn is one TCP (or TLS) connection to the broker: framing (docs/PROTOCOL.md, "Framing":
// a 4-byte big-endian length, then one nexus.v1.Frame), the replies it waits for by
// correlation, its reader and its keep-alive. A Client owns one at a time and replaces it
// when it breaks; everything tied to a connection (pending replies, requests a handler
// holds) ends with it.
type conn struct {
	c  *Client
	nc net.Conn

	wlock chan struct{} // capacity 1: held while one frame is written

	mu      sync.Mutex
	pending map[uint64]waiter
	err     error // why it closed (set once, before done closes)

	done      chan struct{}
	closeOnce sync.Once

	lastRecv atomic.Int64  // unix nanoseconds of the last frame received
	frameMax atomic.Uint32 // largest frame accepted from the broker
	sendMax  atomic.Uint32 // largest frame the broker accepts (0 until its welcome)
	welcome  *Welcome
}

// waiter receives the reply to one frame: on ch (capacity 1), or through fn, called on the
// reader goroutine, for replies nobody waits for (a handler's pipelined stream replies).
type waiter struct {
	ch chan *nexuspb.Frame
	fn func(*nexuspb.Frame)
}

func newConn(c *Client, nc net.Conn) *conn {
	cn := &conn{
		c:       c,
		nc:      nc,
		wlock:   make(chan struct{}, 1),
		pending: make(map[uint64]waiter),
		done:    make(chan struct{}),
	}
	cn.lastRecv.Store(time.Now().UnixNano())
	cn.frameMax.Store(frameBytesMax)
	return cn
}

// close ends the connection with err (the first cause wins) and fails every pending reply.
func (cn *conn) close(err error) {
	cn.closeOnce.Do(func() {
		cn.mu.Lock()
		cn.err = err
		pending := cn.pending
		cn.pending = nil
		cn.mu.Unlock()
		cn.nc.Close()
		close(cn.done)
		cn.c.detach(cn)
		for _, w := range pending {
			if w.ch != nil {
				close(w.ch)
			}
		}
	})
}

// cause returns why the connection closed (nil while it is open).
func (cn *conn) cause() error {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.err
}

func (cn *conn) alive() bool {
	select {
	case <-cn.done:
		return false
	default:
		return true
	}
}

// send writes one frame. Writes are whole: a frame is never left half-written on a live
// connection (a write that fails or times out closes the connection). Returns
// ErrConnectionLost when the connection is or goes down, ctx's error if ctx ends while the
// frame waits for its turn.
func (cn *conn) send(ctx context.Context, f *nexuspb.Frame) error {
	buf := make([]byte, 4, 4+proto.Size(f))
	buf, err := proto.MarshalOptions{}.MarshalAppend(buf, f)
	if err != nil {
		return fmt.Errorf("nexus: encoding a frame: %w", err)
	}
	binary.BigEndian.PutUint32(buf, uint32(len(buf)-4))
	if m := cn.sendMax.Load(); m > 0 && len(buf)-4 > int(m) {
		// The broker would answer frame_too_large and close the connection: refused here,
		// the connection stays.
		return &Error{Code: "frame_too_large", Message: fmt.Sprintf(
			"a frame of %d bytes; the broker accepts at most %d (Welcome.max_frame_bytes)", len(buf)-4, m)}
	}
	select {
	case cn.wlock <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-cn.done:
		return ErrConnectionLost
	}
	defer func() { <-cn.wlock }()
	if !cn.alive() {
		return ErrConnectionLost
	}
	if wt := cn.c.o.writeTimeout; wt > 0 {
		_ = cn.nc.SetWriteDeadline(time.Now().Add(wt))
	}
	if _, err := cn.nc.Write(buf); err != nil {
		cn.close(fmt.Errorf("%w: write: %v", ErrConnectionLost, err))
		return ErrConnectionLost
	}
	return nil
}

// expect registers w for the reply to correlation corr. Returns false when the connection
// is already closed.
func (cn *conn) expect(corr uint64, w waiter) bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.pending == nil {
		return false
	}
	cn.pending[corr] = w
	return true
}

func (cn *conn) forget(corr uint64) {
	cn.mu.Lock()
	if cn.pending != nil {
		delete(cn.pending, corr)
	}
	cn.mu.Unlock()
}

// call sends f with a fresh correlation and waits for its reply. An error frame is
// returned as *Error; a broken connection as ErrConnectionLost.
func (cn *conn) call(ctx context.Context, f *nexuspb.Frame) (*nexuspb.Frame, error) {
	f.Correlation = cn.c.nextCorrelation()
	ch := make(chan *nexuspb.Frame, 1)
	if !cn.expect(f.Correlation, waiter{ch: ch}) {
		return nil, ErrConnectionLost
	}
	if err := cn.send(ctx, f); err != nil {
		cn.forget(f.Correlation)
		return nil, err
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, ErrConnectionLost
		}
		if e := r.GetError(); e != nil {
			return nil, &Error{Code: e.Code, Message: e.Message}
		}
		return r, nil
	case <-ctx.Done():
		cn.forget(f.Correlation)
		return nil, ctx.Err()
	}
}

// sendAsync sends f with a fresh correlation; its reply, when it comes, goes to fn on the
// reader goroutine (nothing, if the connection breaks first).
func (cn *conn) sendAsync(ctx context.Context, f *nexuspb.Frame, fn func(*nexuspb.Frame)) error {
	f.Correlation = cn.c.nextCorrelation()
	if !cn.expect(f.Correlation, waiter{fn: fn}) {
		return ErrConnectionLost
	}
	if err := cn.send(ctx, f); err != nil {
		cn.forget(f.Correlation)
		return err
	}
	return nil
}

// readLoop reads frames until the connection breaks and hands each to dispatch.
func (cn *conn) readLoop() {
	r := bufio.NewReaderSize(cn.nc, 64<<10)
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			cn.close(readError(err))
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 || n > cn.frameMax.Load() {
			cn.close(fmt.Errorf("%w: the broker sent a frame of %d bytes", ErrConnectionLost, n))
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			cn.close(readError(err))
			return
		}
		f := &nexuspb.Frame{}
		if err := proto.Unmarshal(body, f); err != nil {
			cn.close(fmt.Errorf("%w: undecodable frame from the broker: %v", ErrConnectionLost, err))
			return
		}
		cn.lastRecv.Store(time.Now().UnixNano())
		cn.dispatch(f)
	}
}

func readError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: the broker closed the connection", ErrConnectionLost)
	}
	return fmt.Errorf("%w: %v", ErrConnectionLost, err)
}

// isReply reports whether a frame of this kind answers a client frame (and so carries its
// correlation): welcome, emit_ack, subscribe_ack, error, pong, stats_reply, register_ack.
func isReply(f *nexuspb.Frame) bool {
	switch f.Body.(type) {
	case *nexuspb.Frame_Welcome, *nexuspb.Frame_EmitAck, *nexuspb.Frame_SubscribeAck,
		*nexuspb.Frame_Error, *nexuspb.Frame_Pong, *nexuspb.Frame_StatsReply,
		*nexuspb.Frame_RegisterAck:
		return true
	}
	return false
}

func (cn *conn) dispatch(f *nexuspb.Frame) {
	if f.Correlation != 0 && isReply(f) {
		cn.mu.Lock()
		w, ok := cn.pending[f.Correlation]
		if ok {
			delete(cn.pending, f.Correlation)
		}
		cn.mu.Unlock()
		switch {
		case ok && w.ch != nil:
			w.ch <- f
			return
		case ok:
			w.fn(f)
			return
		}
	}
	switch b := f.Body.(type) {
	case *nexuspb.Frame_Event:
		cn.c.dispatchEvent(cn, b.Event)
	case *nexuspb.Frame_Gap:
		cn.c.dispatchGap(b.Gap)
	case *nexuspb.Frame_Ping:
		// The broker's liveness ping (docs/PROTOCOL.md, "Liveness"): answered off the
		// reader, which must never wait for the write lock.
		pong := &nexuspb.Frame{Correlation: f.Correlation,
			Body: &nexuspb.Frame_Pong{Pong: &nexuspb.Pong{Nonce: b.Ping.Nonce}}}
		go func() { _ = cn.send(context.Background(), pong) }()
	case *nexuspb.Frame_Error:
		// Not an answer anybody waits for: a fire-and-forget emit's error (correlation 0) or
		// a connection-level one before the broker closes (timeout, unauthorized).
		cn.c.report(&Error{Code: b.Error.Code, Message: b.Error.Message})
	case *nexuspb.Frame_Goaway:
		// The broker drains; it closes the connection after this, and the client
		// reconnects.
		cn.c.report(fmt.Errorf("nexus: the broker is shutting down (goaway: %s)", b.Goaway.Reason))
	}
}

// keepAlive pings the broker when nothing has arrived for o.keepAlive and closes the
// connection when nothing arrives for twice that.
func (cn *conn) keepAlive() {
	ka := cn.c.o.keepAlive
	if ka <= 0 {
		return
	}
	t := time.NewTicker(ka / 4)
	defer t.Stop()
	var pinged int64
	for {
		select {
		case <-cn.done:
			return
		case now := <-t.C:
			last := cn.lastRecv.Load()
			silent := time.Duration(now.UnixNano() - last)
			if silent >= 2*ka {
				cn.close(fmt.Errorf("%w: nothing from the broker for %v", ErrConnectionLost, silent.Round(time.Second)))
				return
			}
			if silent >= ka && pinged < last {
				pinged = now.UnixNano()
				ping := &nexuspb.Frame{Body: &nexuspb.Frame_Ping{Ping: &nexuspb.Ping{Nonce: uint64(pinged)}}}
				go func() { _ = cn.sendAsync(context.Background(), ping, func(*nexuspb.Frame) {}) }()
			}
		}
	}
}
