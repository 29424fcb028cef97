// SPDX-License-Identifier: Apache-2.0

// Package nexus is the Go client of the Nexus event broker (nexusd). It speaks the protocol
// of docs/PROTOCOL.md — length-prefixed nexus.v1.Frame protobufs over TCP or TLS — and keeps
// one connection per Client, which it re-establishes when the broker restarts.
//
// # Connecting
//
// Dial connects, says hello and returns once the broker has welcomed the client:
//
//	c, err := nexus.Dial(ctx, "nexus.example:7400",
//		nexus.WithCredentials("checkout-service", token), // --accounts (docs/SECURITY.md)
//		nexus.WithTLSFiles("/etc/nexus/ca.pem", "", ""))  // TLS, trusting that CA
//	defer c.Close()
//
// An empty address means $NEXUS_BROKER, else 127.0.0.1:7400. Without WithCredentials the
// client logs in with $NEXUS_USER and $NEXUS_TOKEN, without a TLS option it uses TLS when
// $NEXUS_TLS_CA, $NEXUS_TLS_CERT or $NEXUS_TLS_KEY is set: the same settings as nexusctl and
// the Python client. A refused login is an *Error with code unauthorized
// (errors.Is(err, nexus.ErrUnauthorized)).
//
// # Events
//
// An event has a type "service:action:vN:state" and a campaign: the broker numbers each
// campaign's events 1, 2, 3, ... and every subscriber receives them in that order. Emit sends
// one without waiting (fire-and-forget); EmitAck waits for the broker's acknowledgement,
// which carries the sequence number.
//
// Subscribe takes a campaign (0: every campaign, the firehose) and type patterns whose
// segments may be "*"; its events come out of a channel, or, with SubscribeFunc, through a
// callback. A subscription ends with its context, with Close, or with the client. A program
// that must not miss events across a broker restart subscribes with FromSequence or Resume
// (a broker with --data-dir): after a reconnection the client asks for the events after the
// last one delivered.
//
// # Requests
//
// Request sends "service:action:vN:requested" and returns a Call, whose Updates channel gives
// the lifecycle as typed values: *Started, then for streams *Stream and *Heartbeat, then one
// *Result (success, failed with a code, cancelled, timeout). Call waits for the result only.
// Ending the request's context cancels the request at the broker.
//
// # Serving
//
// Handle registers the client as the external handler of an action. Each request runs a
// Handler — func(ctx, event, streamData) error — in a goroutine: what it sends on streamData
// becomes the request's stream events, its return becomes success or failed (Fail gives the
// code), and its context is cancelled when the requester cancels, the request times out or
// the requester goes away.
//
// # Reconnection
//
// When the connection breaks (the broker restarted, crashed, or stopped answering the
// keep-alive pings) the client reconnects with exponential back-off and jitter
// (WithReconnect), subscribes its subscriptions again and registers its handlers again.
// Calls waiting for a reply on the broken connection return ErrConnectionLost, open requests
// end with it (the broker cancels a requester's requests when it goes), and the requests a
// handler held are cancelled (the broker fails them with handler_lost). Emit, EmitAck,
// Request and the others wait for the next connection until their context ends.
// WithoutReconnect makes the first break final.
//
// # Flow control
//
// The client's reader never waits for a program: each subscription and request has a queue
// of up to WithQueueLimit events. One whose reader falls that far behind is ended with
// ErrSlowConsumer rather than losing events silently (the broker does the same with
// connections: docs/PROTOCOL.md, "Slow consumers"). A program that cannot keep up with a
// campaign should read it on its own goroutine, or subscribe with narrower patterns.
//
// # Building offline
//
// The module depends on google.golang.org/protobuf only, taken from Debian's
// golang-google-protobuf-dev through a replace directive: no module proxy is needed
// (client/go/README.md).
package nexus
