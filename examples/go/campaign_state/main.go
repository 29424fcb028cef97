// SPDX-License-Identifier: Apache-2.0

// Command campaign_state is an external handler for nexusd, written with the Go client
// (client/go): it serves campaign_ext:stream_state (a campaign's state changes, as diffs)
// and campaign_ext:stream_analytics (samples of a campaign's activity) next to the broker's
// built-in campaign:* handlers, whose state it watches. README.md shows it at work.
//
//	campaign_state [-broker HOST:PORT]
//
// The broker address defaults to $NEXUS_BROKER, else 127.0.0.1:7400; credentials come from
// $NEXUS_USER and $NEXUS_TOKEN (an account that may `handle campaign_ext:*`, `subscribe`
// the campaigns it serves and `request campaign:state`), TLS from $NEXUS_TLS_CA,
// $NEXUS_TLS_CERT and $NEXUS_TLS_KEY. It runs until SIGINT or SIGTERM, reconnecting when
// the broker restarts.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"nexus/client/go/nexus"
)

func main() {
	broker := flag.String("broker", "", "broker HOST:PORT (default $NEXUS_BROKER, else 127.0.0.1:7400)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := log.New(os.Stderr, "campaign_state: ", log.LstdFlags)
	if err := run(ctx, *broker, logger, nil); err != nil {
		logger.Fatal(err)
	}
}

// run connects two clients (one serves, one watches), registers the handlers, reports
// ready (when not nil) and serves until ctx ends.
func run(ctx context.Context, addr string, logger *log.Logger, ready func()) error {
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	onState := func(who string) nexus.Option {
		return nexus.WithStateHandler(func(s nexus.ConnState, err error) {
			if err != nil {
				logger.Printf("%s connection %s: %v", who, s, err)
			} else {
				logger.Printf("%s connection %s", who, s)
			}
		})
	}
	watch, err := nexus.Dial(dialCtx, addr, nexus.WithClientName("campaign_state-watch"), onState("watch"))
	if err != nil {
		return err
	}
	defer watch.Close()
	serve, err := nexus.Dial(dialCtx, addr, nexus.WithClientName("campaign_state-serve"), onState("serve"),
		nexus.WithErrorHandler(func(err error) { logger.Print(err) }))
	if err != nil {
		return err
	}
	defer serve.Close()

	h := &CampaignStateStreamingHandler{watch: watch}
	for _, action := range []string{ActionStreamState, ActionStreamAnalytics} {
		if err := serve.Handle(dialCtx, action, logged(logger, h.HandleStreamingEvent), nexus.Streaming()); err != nil {
			return fmt.Errorf("registering %s: %w", action, err)
		}
	}
	logger.Printf("serving %s and %s on %s", ActionStreamState, ActionStreamAnalytics, serve.Addr())
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	logger.Print("stopping")
	return nil
}

// logged wraps a handler with a log line per request: when it starts and how it ends.
func logged(logger *log.Logger, h nexus.Handler) nexus.Handler {
	return func(ctx context.Context, ev *nexus.EventResponse, streamData chan<- *nexus.EventResponse) error {
		t0 := time.Now()
		logger.Printf("%s: campaign %d, request %s", ev.EventType, ev.CampaignId, ev.EventId)
		err := h(ctx, ev, streamData)
		end := "success"
		if ctx.Err() != nil {
			end = "ended by the broker (cancel, timeout, requester gone)"
		} else if err != nil {
			end = "failed: " + err.Error()
		}
		logger.Printf("request %s after %v: %s", ev.EventId, time.Since(t0).Round(time.Millisecond), end)
		return err
	}
}
