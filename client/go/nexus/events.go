// SPDX-License-Identifier: Apache-2.0

package nexus

import (
	"crypto/rand"
	"encoding/hex"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"

	"nexus/client/go/nexuspb"
)

// The wire types a program handles, from package nexuspb (generated from proto/). They are
// aliases: a *nexus.EventResponse is a *nexuspb.EventResponse.
type (
	// EventRequest is an emitted event (docs/PROTOCOL.md, "emit").
	EventRequest = nexuspb.EventRequest
	// EventResponse is a delivered event, an emit's acknowledgement or a lifecycle event.
	EventResponse = nexuspb.EventResponse
	// Payload is an event's business data: Data and Versioning, both Structs.
	Payload = nexuspb.Payload
	// Metadata is an event's request context; GlobalContext.UserId is what user filters match.
	Metadata = nexuspb.Metadata
	// GlobalContext holds the user id and the correlation id of an event's metadata.
	GlobalContext = nexuspb.GlobalContext
	// Gap says which events of a campaign a subscriber will not get (docs/PROTOCOL.md, "gap").
	Gap = nexuspb.Gap
	// Welcome is the broker's answer to the hello.
	Welcome = nexuspb.Welcome
	// StatsReply holds the broker's per-shard counters.
	StatsReply = nexuspb.StatsReply
)

// State is the last segment of an event type (docs/PROTOCOL.md, "Event types").
type State string

// The states of the event-type grammar. Requested, Cancel and the plain-event states are
// emitted by clients; for an action with a handler, the broker emits Started, Heartbeat and
// the terminal states, and the handler Stream, Success and Failed.
const (
	StateRequested State = "requested"
	StateStarted   State = "started"
	StateStream    State = "stream"
	StateHeartbeat State = "heartbeat"
	StateSuccess   State = "success"
	StateFailed    State = "failed"
	StateCompleted State = "completed"
	StateCancel    State = "cancel"
	StateCancelled State = "cancelled"
	StateTimeout   State = "timeout"
)

// Terminal reports whether s ends a request: success, failed, cancelled or timeout.
func (s State) Terminal() bool {
	return s == StateSuccess || s == StateFailed || s == StateCancelled || s == StateTimeout
}

// SplitType splits an event type "service:action:vN:state" into its base "service:action:vN"
// and its state. ok is false when t does not have four segments; the segments themselves are
// checked by the broker, which names the bad one.
func SplitType(t string) (base string, state State, ok bool) {
	if strings.Count(t, ":") != 3 {
		return "", "", false
	}
	i := strings.LastIndexByte(t, ':')
	return t[:i], State(t[i+1:]), true
}

// Action returns the "service:action" of an event type or base ("" when t has fewer than two
// segments): the name handlers register under.
func Action(t string) string {
	i := strings.IndexByte(t, ':')
	if i < 0 {
		return ""
	}
	j := strings.IndexByte(t[i+1:], ':')
	if j < 0 {
		return t
	}
	return t[:i+1+j]
}

// MatchType reports whether event type t matches subscription pattern p, as the broker
// matches them: "*" (and "") match everything, otherwise both have four segments and each
// segment of p is "*" or equal to t's.
func MatchType(p, t string) bool {
	if p == "*" || p == "" {
		return true
	}
	for k := 0; k < 4; k++ {
		pi, ti := strings.IndexByte(p, ':'), strings.IndexByte(t, ':')
		if k == 3 {
			if pi >= 0 || ti >= 0 {
				return false
			}
			return p == "*" || p == t
		}
		if pi < 0 || ti < 0 {
			return false
		}
		if ps := p[:pi]; ps != "*" && ps != t[:ti] {
			return false
		}
		p, t = p[pi+1:], t[ti+1:]
	}
	return false
}

// NewPayload builds a Payload whose Data holds m, converted as structpb.NewStruct converts
// (numbers become doubles; nested maps and slices become Structs and lists).
func NewPayload(m map[string]any) (*Payload, error) {
	s, err := structpb.NewStruct(m)
	if err != nil {
		return nil, err
	}
	return &Payload{Data: s}, nil
}

// Data returns the Data Struct of an event's payload as a map (nil when it has none).
// Numbers are float64: a Struct holds doubles.
func Data(ev *EventResponse) map[string]any {
	if d := ev.GetPayload().GetData(); d != nil {
		return d.AsMap()
	}
	return nil
}

// UserID returns metadata.global_context.user_id of an event ("" when absent).
func UserID(ev *EventResponse) string {
	return ev.GetMetadata().GetGlobalContext().GetUserId()
}

// newEventID returns a fresh UUIDv4: the client names its requests itself, so that their
// lifecycle events can be routed before the acknowledgement arrives.
func newEventID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("nexus: crypto/rand failed: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}
