// SPDX-License-Identifier: Apache-2.0

package nexus

import (
	"errors"
	"fmt"
)

// Error is an error frame from the broker: a code from docs/PROTOCOL.md ("error") and a
// message that says what was wrong. Compare codes with errors.Is and the Err* values below,
// or read Code.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "nexus: " + e.Code
	}
	return "nexus: " + e.Code + ": " + e.Message
}

// Is makes errors.Is(err, ErrUnauthorized) (and the other code values) true for an error
// frame with that code, whatever its message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Code == e.Code
}

// Error codes a program may want to tell apart (the full list: docs/PROTOCOL.md).
var (
	// ErrUnauthorized: the broker refused the credentials (it closes the connection).
	ErrUnauthorized = &Error{Code: "unauthorized"}
	// ErrPermissionDenied: the account may not do this (docs/SECURITY.md).
	ErrPermissionDenied = &Error{Code: "permission_denied"}
	// ErrInvalidEventType: an event type breaks the grammar; the message names the part.
	ErrInvalidEventType = &Error{Code: "invalid_event_type"}
	// ErrInvalidPattern: a subscription pattern breaks the grammar.
	ErrInvalidPattern = &Error{Code: "invalid_pattern"}
	// ErrLimitExceeded: a bound of the broker (docs/OPERATIONS.md).
	ErrLimitExceeded = &Error{Code: "limit_exceeded"}
	// ErrFrameTooLarge: a frame over the broker's max_frame_bytes. The client refuses it
	// before sending (the broker would close the connection).
	ErrFrameTooLarge = &Error{Code: "frame_too_large"}
	// ErrUnknownRequest: a cancel or a handler reply named no open request.
	ErrUnknownRequest = &Error{Code: "unknown_request"}
	// ErrDuplicateRequest: a request's id names a request still open in its campaign.
	ErrDuplicateRequest = &Error{Code: "duplicate_request"}
	// ErrBadRequest: for example from_sequence on a broker without --data-dir.
	ErrBadRequest = &Error{Code: "bad_request"}
)

var (
	// ErrClosed: the Client was closed (or gave up reconnecting, see Client.Err).
	ErrClosed = errors.New("nexus: client closed")
	// ErrConnectionLost: the connection broke while the call was in flight. The client
	// reconnects (unless WithoutReconnect); what was in flight is not retried, because an
	// emit may or may not have reached the broker. A retry with the same event id and the
	// same client name is recognised as a duplicate within the broker's window.
	ErrConnectionLost = errors.New("nexus: connection to the broker lost")
	// ErrSlowConsumer: a subscription or a request delivered more events than its queue
	// holds (WithQueueLimit) while nobody read them; it was ended rather than lose events
	// silently.
	ErrSlowConsumer = errors.New("nexus: events not read: queue limit reached")
	// ErrDuplicate: the broker acknowledged an emit as a duplicate (same event id and type
	// within its window): nothing was delivered, and a request gets no lifecycle.
	ErrDuplicate = errors.New("nexus: duplicate event (acknowledged, not delivered)")
)

// RequestError is how a request ended when it did not succeed: failed (Code says why, e.g.
// no_handler, handler_lost, or the handler's own code), cancelled or timeout. Event is the
// terminal event. When the request was cancelled through its context, errors.Is(err,
// context.Canceled) (or DeadlineExceeded) holds too.
type RequestError struct {
	State   State
	Code    string
	Message string
	Event   *EventResponse
	cause   error
}

func (e *RequestError) Error() string {
	s := "nexus: request " + string(e.State)
	if e.Code != "" {
		s += ": " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Unwrap returns the context's error when the request was cancelled through its context.
func (e *RequestError) Unwrap() error { return e.cause }

// HandlerError is a handler's failure with a code: returned by a Handler, the request ends
// `failed` with this code (EventResponse.code) and a payload {code, message}. Make one with
// Fail.
type HandlerError struct {
	Code    string
	Message string
}

func (e *HandlerError) Error() string { return e.Code + ": " + e.Message }

// Fail returns a HandlerError: a Handler that returns it ends its request `failed` with code
// (a short snake_case name the requester can act on) and the formatted message.
func Fail(code, format string, args ...any) error {
	return &HandlerError{Code: code, Message: fmt.Sprintf(format, args...)}
}
