// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"time"

	"nexus/client/go/nexus"
)

// The actions this handler serves (service campaign_ext, beside nexusd's built-in campaign
// service, docs/HANDLERS.md). Both are streams.
const (
	ActionStreamState     = "campaign_ext:stream_state"
	ActionStreamAnalytics = "campaign_ext:stream_analytics"
)

// Bounds on what a request may ask for, and why.
const (
	// Analytics samples: at most ten a second per stream (a dashboard needs no more), at
	// least one every ten minutes (the broker's stream timeout is 30 min by default).
	intervalMinMS     = 100
	intervalMaxMS     = 600000
	intervalDefaultMS = 5000
	// Distinct user ids an analytics stream remembers to count them: past it, the count
	// says "at least" (users_capped) instead of growing without bound.
	usersMax = 10000
)

// CampaignStateStreamingHandler streams a campaign's state changes and analytics, the idea
// of the ancestor's handler of the same name, moved out of the broker into a program of its
// own: nexusd keeps each campaign's state (the built-in campaign:* handlers); this handler
// watches it through a second client, watch, and streams what changed.
//
// The ancestor polled the state every second and compared; here nothing is polled: the
// built-in campaign:update, campaign:feature and campaign:config publish every change to
// the campaign as one campaign:state:v1:success event with the full state, which a
// subscription receives as it happens, in the campaign's order.
type CampaignStateStreamingHandler struct {
	// watch subscribes and asks the built-in handlers. It is not the client that serves:
	// a serving connection should not subscribe to its own actions (nexus.Client.Handle).
	watch *nexus.Client
}

// HandleStreamingEvent is the nexus.Handler of both actions: event is the request, and each
// value sent on streamData becomes one of its stream events.
func (m *CampaignStateStreamingHandler) HandleStreamingEvent(ctx context.Context, event *nexus.EventResponse, streamData chan<- *nexus.EventResponse) error {
	switch nexus.Action(event.EventType) {
	case ActionStreamState:
		return m.streamCampaignState(ctx, event, streamData)
	case ActionStreamAnalytics:
		return m.streamCampaignAnalytics(ctx, event, streamData)
	default:
		return nexus.Fail("unknown_action", "no stream %s here", event.EventType)
	}
}

// campaignState is the part of the built-in's full state (docs/HANDLERS.md, "Campaign
// state") that this handler compares.
type campaignState struct {
	version     float64
	state       map[string]any
	features    []string
	lastUpdated float64
}

func parseState(ev *nexus.EventResponse) campaignState {
	d := nexus.Data(ev)
	st := campaignState{state: map[string]any{}}
	st.version, _ = d["version"].(float64)
	st.lastUpdated, _ = d["last_updated_ms"].(float64)
	if s, ok := d["state"].(map[string]any); ok {
		st.state = s
	}
	if fs, ok := d["features"].([]any); ok {
		for _, f := range fs {
			if s, ok := f.(string); ok {
				st.features = append(st.features, s)
			}
		}
	}
	return st
}

// streamCampaignState streams the campaign's state: a snapshot first, then one event per
// change with only what changed (keys set or changed, keys removed, features added and
// removed) and the version it brings the state to. A requester applies the changes to the
// snapshot in stream order; version says it missed none.
func (m *CampaignStateStreamingHandler) streamCampaignState(ctx context.Context, event *nexus.EventResponse, streamData chan<- *nexus.EventResponse) error {
	campaign := event.CampaignId
	// Subscribe first, then read the state: a change made between the two is not lost (it
	// comes through the subscription, and versions tell it from the snapshot).
	changes, err := m.watch.Subscribe(ctx, campaign, []string{"campaign:state:v1:success"})
	if err != nil {
		return nexus.Fail("unavailable", "subscribing to campaign %d: %v", campaign, err)
	}
	defer changes.Close()
	snap, err := m.watch.Call(ctx, &nexus.EventRequest{EventType: "campaign:state:v1", CampaignId: campaign})
	if err != nil {
		return nexus.Fail("unavailable", "reading the state of campaign %d: %v", campaign, err)
	}
	last := parseState(snap)
	if err := send(ctx, streamData, map[string]any{
		"kind":            "snapshot",
		"campaign_id":     strconv.FormatInt(campaign, 10),
		"version":         last.version,
		"state":           last.state,
		"features":        toAny(last.features),
		"last_updated_ms": last.lastUpdated,
	}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-changes.Events():
			if !ok {
				return nexus.Fail("unavailable", "the subscription to campaign %d ended: %v", campaign, changes.Err())
			}
			next := parseState(ev)
			if next.version <= last.version {
				continue // the snapshot had it already (or a campaign:state answer)
			}
			change := diff(last, next)
			change["kind"] = "change"
			change["campaign_id"] = strconv.FormatInt(campaign, 10)
			change["version"] = next.version
			change["last_updated_ms"] = next.lastUpdated
			if err := send(ctx, streamData, change); err != nil {
				return err
			}
			last = next
		}
	}
}

// diff returns what changed from a to b: "changed" (key: new value), "removed" (keys),
// "features_added", "features_removed", each present only when not empty.
func diff(a, b campaignState) map[string]any {
	out := map[string]any{}
	changed := map[string]any{}
	for k, v := range b.state {
		if old, ok := a.state[k]; !ok || !reflect.DeepEqual(old, v) {
			changed[k] = v
		}
	}
	var removed []string
	for k := range a.state {
		if _, ok := b.state[k]; !ok {
			removed = append(removed, k)
		}
	}
	if len(changed) > 0 {
		out["changed"] = changed
	}
	if len(removed) > 0 {
		sort.Strings(removed)
		out["removed"] = toAny(removed)
	}
	if added := minus(b.features, a.features); len(added) > 0 {
		out["features_added"] = toAny(added)
	}
	if gone := minus(a.features, b.features); len(gone) > 0 {
		out["features_removed"] = toAny(gone)
	}
	return out
}

// minus returns the strings of a that are not in b, in a's order.
func minus(a, b []string) []string {
	in := make(map[string]bool, len(b))
	for _, s := range b {
		in[s] = true
	}
	var out []string
	for _, s := range a {
		if !in[s] {
			out = append(out, s)
		}
	}
	return out
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// send sends one stream event with data as its payload, unless ctx ends first.
func send(ctx context.Context, streamData chan<- *nexus.EventResponse, data map[string]any) error {
	p, err := nexus.NewPayload(data)
	if err != nil {
		return fmt.Errorf("building a stream event: %w", err)
	}
	select {
	case streamData <- &nexus.EventResponse{Payload: p}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// analytics counts what one analytics stream has seen of its campaign.
type analytics struct {
	events      int
	sinceSample int
	byState     map[string]float64
	users       map[string]bool
	usersCapped bool
	lastSeq     uint64
	state       campaignState
	samples     int
	sampledAt   time.Time
}

func (a *analytics) add(ev *nexus.EventResponse) {
	a.events++
	a.sinceSample++
	if _, st, ok := nexus.SplitType(ev.EventType); ok {
		a.byState[string(st)]++
	}
	if u := nexus.UserID(ev); u != "" && !a.users[u] {
		if len(a.users) < usersMax {
			a.users[u] = true
		} else {
			a.usersCapped = true
		}
	}
	if ev.Sequence > a.lastSeq {
		a.lastSeq = ev.Sequence
	}
	if ev.EventType == "campaign:state:v1:success" {
		if st := parseState(ev); st.version >= a.state.version {
			a.state = st
		}
	}
}

func (a *analytics) sample(campaign int64, now time.Time) map[string]any {
	rate := 0.0
	if a.samples > 0 {
		if secs := now.Sub(a.sampledAt).Seconds(); secs > 0 {
			rate = math.Round(float64(a.sinceSample)/secs*100) / 100
		}
	}
	byState := map[string]any{}
	for k, v := range a.byState {
		byState[k] = v
	}
	a.samples++
	a.sinceSample = 0
	a.sampledAt = now
	return map[string]any{
		"campaign_id":       strconv.FormatInt(campaign, 10),
		"sample":            a.samples,
		"events":            a.events,
		"events_per_second": rate,
		"by_state":          byState,
		"users":             len(a.users),
		"users_capped":      a.usersCapped,
		"last_sequence":     float64(a.lastSeq),
		"state_version":     a.state.version,
		"state_keys":        len(a.state.state),
		"features":          toAny(a.state.features),
		"last_updated_ms":   a.state.lastUpdated,
		"timestamp_ms":      float64(now.UnixMilli()),
	}
}

// streamCampaignAnalytics streams a sample of the campaign's activity at once and then every
// interval_ms (payload, default 5000, 100 to 600000): events seen since the stream opened,
// by state, events per second since the previous sample, distinct users, the last sequence,
// and the state's version, keys and features. It counts from its own subscription to every
// event of the campaign; its own events (its stream events, published to the campaign like
// every lifecycle event, and its request to the built-in campaign:state for the starting
// state) are not counted.
func (m *CampaignStateStreamingHandler) streamCampaignAnalytics(ctx context.Context, event *nexus.EventResponse, streamData chan<- *nexus.EventResponse) error {
	campaign := event.CampaignId
	interval := float64(intervalDefaultMS)
	if v, ok := nexus.Data(event)["interval_ms"]; ok {
		f, isNum := v.(float64)
		if !isNum || f < intervalMinMS || f > intervalMaxMS {
			return nexus.Fail("invalid_interval_ms", "interval_ms must be a number from %d to %d", intervalMinMS, intervalMaxMS)
		}
		interval = f
	}
	all, err := m.watch.Subscribe(ctx, campaign, nil)
	if err != nil {
		return nexus.Fail("unavailable", "subscribing to campaign %d: %v", campaign, err)
	}
	defer all.Close()
	a := &analytics{byState: map[string]float64{}, users: map[string]bool{}}
	snap, err := m.watch.Request(ctx, &nexus.EventRequest{EventType: "campaign:state:v1", CampaignId: campaign})
	if err != nil {
		return nexus.Fail("unavailable", "reading the state of campaign %d: %v", campaign, err)
	}
	res, err := snap.Wait()
	if err != nil {
		return nexus.Fail("unavailable", "reading the state of campaign %d: %v", campaign, err)
	}
	a.state = parseState(res.E)
	// The campaign's last sequence so far; the snapshot's own events are not its activity.
	a.lastSeq = res.E.Sequence
	own := snap.ID
	if err := send(ctx, streamData, a.sample(campaign, time.Now())); err != nil {
		return err
	}
	tick := time.NewTicker(time.Duration(interval) * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-all.Events():
			if !ok {
				return nexus.Fail("unavailable", "the subscription to campaign %d ended: %v", campaign, all.Err())
			}
			// Not counted: this stream's own lifecycle and its snapshot request.
			if ev.CorrelationId != event.EventId && ev.EventId != own && ev.CorrelationId != own {
				a.add(ev)
			}
		case now := <-tick.C:
			if err := send(ctx, streamData, a.sample(campaign, now)); err != nil {
				return err
			}
		}
	}
}
